"""The pack's socket types and node category."""

from comfy_api.latest import io

__all__ = ["CATEGORY", "Edit", "Attention", "Inversion", "Capture"]

CATEGORY = "prompt_to_prompt"

Edit = io.Custom("P2P_EDIT")  # adapter.bundle.EditBundle
Attention = io.Custom("P2P_ATTENTION")  # adapter.attention_view.CapturedAttention
Inversion = io.Custom("P2P_INVERSION")  # adapter.inversion.InversionBundle
Capture = io.Custom("P2P_CAPTURE")  # p2p.CaptureSpec, or None for capture off
