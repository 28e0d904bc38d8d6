"""P2PDemoModel: the small model this project trains on its world of coloured shapes."""

from __future__ import annotations

from ..shapes_demo.model import load
from .host_version import require_supported_host

__all__ = ["P2PDemoModel"]


class P2PDemoModel:
    DESCRIPTION = (
        "A small text-to-image model trained by this project on 32x32 pictures of coloured shapes (see MODEL.md), "
        "built from ComfyUI's own classes. Runs in seconds on a CPU. Its words: circle, square, triangle; red, green, "
        "blue, yellow, purple, orange; small, big; on the left/right, at the top/bottom, in the center; striped; "
        "on a white/black/gray background. Use 'Empty Chroma Radiance Latent Image' at 32x32 for its latent."
    )
    CATEGORY = "prompt_to_prompt"
    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    OUTPUT_TOOLTIPS = (
        "The UNet (32x32 pixel space).",
        "Its text encoder, with ComfyUI's SD1 tokenizer.",
        "A pixel-space VAE: latents are the pixels.",
    )
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    def load(self):
        require_supported_host("P2PDemoModel")
        return load()
