"""ComfyUI adapters: thin nodes over the `p2p` engine."""

from .attention_nodes import P2PAttentionCapture, P2PAttentionMaps
from .demo_model import P2PDemoModel
from .edit_nodes import P2PEditSpec, P2PLocalBlend, P2PReweight
from .host_version import log_if_unsupported
from .inversion_nodes import P2PInvert, P2PLoadInversion, P2PSaveInversion
from .sampler_node import P2PSampler

log_if_unsupported()

NODE_CLASS_MAPPINGS = {
    "P2PEditSpec": P2PEditSpec,
    "P2PReweight": P2PReweight,
    "P2PLocalBlend": P2PLocalBlend,
    "P2PSampler": P2PSampler,
    "P2PAttentionCapture": P2PAttentionCapture,
    "P2PAttentionMaps": P2PAttentionMaps,
    "P2PInvert": P2PInvert,
    "P2PSaveInversion": P2PSaveInversion,
    "P2PLoadInversion": P2PLoadInversion,
    "P2PDemoModel": P2PDemoModel,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "P2PEditSpec": "P2P Edit Spec",
    "P2PReweight": "P2P Reweight",
    "P2PLocalBlend": "P2P Local Blend",
    "P2PSampler": "P2P Sampler",
    "P2PAttentionCapture": "P2P Attention Capture",
    "P2PAttentionMaps": "P2P Attention Maps",
    "P2PInvert": "P2P Invert (real image)",
    "P2PSaveInversion": "P2P Save Inversion",
    "P2PLoadInversion": "P2P Load Inversion",
    "P2PDemoModel": "P2P Demo Model (shapes)",
}
