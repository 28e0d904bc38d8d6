"""The pack's nodes (ComfyUI's V3 schema), declarations only: the work is in `adapter` and `p2p`."""

from comfy_api.latest import ComfyExtension, io

from ..adapter.host_version import log_if_unsupported
from .attention_nodes import P2PAttentionCapture, P2PAttentionMaps, P2PAttentionSegments, P2PGuiderAttention
from .demo_model import P2PDemoModel
from .edit_nodes import P2PEditSpec, P2PLocalBlend, P2PReweight
from .inversion_nodes import P2PInvert, P2PLoadInversion, P2PSaveInversion
from .sampler_nodes import P2PGuider, P2PSampler
from .style_nodes import P2PAppearanceTransfer, P2PPromptBatch, P2PStyleAligned

__all__ = [
    "NODES", "PromptToPromptExtension", "comfy_entrypoint", "P2PEditSpec", "P2PReweight", "P2PLocalBlend",
    "P2PSampler", "P2PGuider", "P2PStyleAligned", "P2PPromptBatch", "P2PAppearanceTransfer",
    "P2PAttentionCapture", "P2PAttentionMaps", "P2PAttentionSegments", "P2PGuiderAttention", "P2PInvert",
    "P2PSaveInversion", "P2PLoadInversion", "P2PDemoModel",
]

# In the Add Node menu's order
NODES: list[type[io.ComfyNode]] = [
    P2PEditSpec, P2PReweight, P2PLocalBlend, P2PSampler, P2PGuider, P2PStyleAligned, P2PPromptBatch,
    P2PAppearanceTransfer, P2PAttentionCapture, P2PAttentionMaps, P2PAttentionSegments, P2PGuiderAttention,
    P2PInvert, P2PSaveInversion, P2PLoadInversion, P2PDemoModel,
]


log_if_unsupported()  # ComfyUI 0.3.75 does not call ComfyExtension.on_load: say it when the pack is imported


class PromptToPromptExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)


async def comfy_entrypoint() -> PromptToPromptExtension:
    return PromptToPromptExtension()
