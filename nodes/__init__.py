"""ComfyUI adapters: thin nodes over the `p2p` engine."""

from .demo_model import P2PDemoModel
from .edit_nodes import P2PEditSpec, P2PLocalBlend, P2PReweight
from .sampler_node import P2PSampler

NODE_CLASS_MAPPINGS = {
    "P2PEditSpec": P2PEditSpec,
    "P2PReweight": P2PReweight,
    "P2PLocalBlend": P2PLocalBlend,
    "P2PSampler": P2PSampler,
    "P2PDemoModel": P2PDemoModel,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "P2PEditSpec": "P2P Edit Spec",
    "P2PReweight": "P2P Reweight",
    "P2PLocalBlend": "P2P Local Blend",
    "P2PSampler": "P2P Sampler",
    "P2PDemoModel": "P2P Demo Model (shapes)",
}
