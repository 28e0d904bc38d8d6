"""ComfyUI adapters: thin nodes over the `p2p` engine."""

from .edit_nodes import P2PEditSpec, P2PLocalBlend, P2PReweight
from .sampler_node import P2PSampler

NODE_CLASS_MAPPINGS = {
    "P2PEditSpec": P2PEditSpec,
    "P2PReweight": P2PReweight,
    "P2PLocalBlend": P2PLocalBlend,
    "P2PSampler": P2PSampler,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "P2PEditSpec": "P2P Edit Spec",
    "P2PReweight": "P2P Reweight",
    "P2PLocalBlend": "P2P Local Blend",
    "P2PSampler": "P2P Sampler",
}
