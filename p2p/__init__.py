"""Prompt-to-Prompt editing engine (Hertz et al., ICLR 2023), in plain PyTorch.

Nothing here imports ComfyUI: the host adapter (`adapter/`, which the nodes in `nodes/` call) translates the
host's attention calls into `LayerCall`s and hands the engine its own attention function.
"""

from .align import TokenMapping, global_align, identity_mapping, refine_mapping, replace_mapping
from .capture import (
    LAYER_GROUPS,
    AttentionCapture,
    AttentionMaps,
    CaptureSpec,
    prompt_words,
    self_components,
    word_maps,
)
from .errors import P2PError
from .local_blend import BlendMaps, blend, blend_mask
from .runtime import EditRun, JointCall, LayerCall
from .schedule import Window, step_of_sigma, token_alphas
from .shared_attention import ADAIN_MODES, SharedAttentionSpec
from .spec import MODES, REWEIGHT_RANGE, Edit, EditBatch, LocalBlend, make_edit
from .text_inputs import parse_items, parse_phrases, parse_schedule, parse_weights
from .tokens import END, PAD, START, WORD, PromptTokens, TokenPiece, Word

__all__ = [
    "TokenMapping", "global_align", "identity_mapping", "refine_mapping", "replace_mapping",
    "LAYER_GROUPS", "AttentionCapture", "AttentionMaps", "CaptureSpec", "prompt_words", "self_components", "word_maps",
    "P2PError",
    "BlendMaps", "blend", "blend_mask",
    "EditRun", "JointCall", "LayerCall",
    "Window", "step_of_sigma", "token_alphas",
    "MODES", "REWEIGHT_RANGE", "Edit", "EditBatch", "LocalBlend", "make_edit",
    "ADAIN_MODES", "SharedAttentionSpec",
    "parse_items", "parse_phrases", "parse_schedule", "parse_weights",
    "END", "PAD", "START", "WORD", "PromptTokens", "TokenPiece", "Word",
]
