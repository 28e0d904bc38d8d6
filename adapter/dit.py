"""MM-DiT models (Flux, Chroma, SD3): where the source and the edits sit in their joint attention, and the attention
override that drives an `EditRun` there.

ComfyUI routes every attention call of these models through `transformer_options["optimized_attention_override"]`
(`override(func, *args, **kwargs)`), the prompt's T text tokens first, then the I image tokens (one per 2x2 patch
of the latent):
* Flux and Chroma: q, k, v [B, heads, T + I, d] (rotary embedding applied, `skip_reshape=True`);
* SD3: q, k [B, T + I, heads * d] (v is [B, T + I, heads, d]).
A call of another length (SD3.5's image-only attention, a Flux Kontext reference image's tokens) is left alone.
An override another node set before this one is chained: it gets the (injected) arguments in place of the
attention function's.
"""

from __future__ import annotations

import math

from ..p2p import JointCall
from .patch import HostRun, install_step_wrapper

__all__ = ["JOINT_FAMILIES", "joint_family", "install_joint", "blend_layers"]

# ComfyUI's diffusion-model classes whose joint attention the pack edits: their family's name
JOINT_FAMILIES = {"Flux": "Flux", "Chroma": "Chroma", "OpenAISignatureMMDITWrapper": "SD3"}


# Shin et al. (ICCV 2025; their code's TOP5_BLOCKS): the five blocks whose image-to-text maps locate words best, where
# local blend takes its maps, by (family, double-stream or joint blocks, single-stream blocks, SD3.5's extra
# image-only attention). Chroma shares Flux.1's architecture and its table (the paper did not analyse Chroma).
# Other configurations (SD3.5 Medium, the tests' tiny models) take every block.
_BLEND_BLOCKS = {
    ("Flux", 19, 38, False): ("double", (11, 12, 14, 17, 18)),  # Flux.1 dev and schnell
    ("Chroma", 19, 38, False): ("double", (11, 12, 14, 17, 18)),
    ("SD3", 24, 0, False): ("joint", (4, 5, 7, 8, 9)),  # SD3 Medium
    ("SD3", 38, 0, False): ("joint", (16, 18, 20, 21, 24)),  # SD3.5 Large and Large Turbo
}


def blend_layers(family: str, unet_config: dict) -> frozenset | None:
    """The `JointCall.layer`s local blend takes its maps from, or None for every block. SD3's calls are counted from
    1 in each evaluation; Flux's and Chroma's are named by ComfyUI's (block_type, block_index)."""
    key = (family, int(unet_config.get("depth", 0)), int(unet_config.get("depth_single_blocks", 0)),
           bool(unet_config.get("x_block_self_attn_layers")))
    found = _BLEND_BLOCKS.get(key)
    if found is None:
        return None
    kind, blocks = found
    return frozenset((kind, b + 1 if kind == "joint" else b) for b in blocks)


def joint_family(model_patcher) -> str | None:
    """"Flux", "Chroma" or "SD3" for a model whose joint attention the pack edits, else None."""
    dm = model_patcher.get_model_object("diffusion_model")
    return JOINT_FAMILIES.get(type(dm).__name__)


class JointAttentionOverride:
    def __init__(self, host: HostRun, text_tokens: int, patch_size: int, prior=None):
        self.host, self.text_tokens, self.patch_size, self.prior = host, text_tokens, patch_size, prior

    def __deepcopy__(self, memo):
        return self  # model_options are deep-copied on clone; the run must stay one object

    def _next(self, func, *args, **kwargs):
        return self.prior(func, *args, **kwargs) if self.prior is not None else func(*args, **kwargs)

    def _layout(self, q, options: dict, kwargs: dict, args: tuple) -> JointCall | None:
        host = self.host
        chunks, uuids = options.get("cond_or_uncond") or [], options.get("uuids") or []
        token_axis = 2 if kwargs.get("skip_reshape") else 1
        if q.ndim != token_axis + 2 or not chunks or q.shape[0] % len(chunks) or host.latent_size is None:
            return None
        size = q.shape[0] // len(chunks)
        h, w = (math.ceil(side / self.patch_size) for side in host.latent_size)
        joint = q.shape[token_axis] == self.text_tokens + h * w  # not an image-only or reference-image call
        if size != host.run.batch.size or host.positive_uuid not in uuids or not joint:
            return None
        source = uuids.index(host.positive_uuid) * size
        heads = q.shape[1] if token_axis == 2 else kwargs.get("heads", args[3] if len(args) > 3 else None)
        if heads is None:
            return None
        layer = (options["block_type"], options["block_index"]) if "block_index" in options else None
        return JointCall(source, tuple(range(source + 1, source + size)), self.text_tokens, heads=int(heads),
                         spatial=(h, w), token_axis=token_axis, layer=layer)

    def __call__(self, func, *args, **kwargs):
        q, k, v = args[:3]
        call = self._layout(q, kwargs.get("transformer_options") or {}, kwargs, args)
        if call is None:
            return self._next(func, *args, **kwargs)
        mask = kwargs.get("mask", args[4] if len(args) > 4 else None)

        def attend(q_, k_, v_, mask_):
            if len(args) > 4:
                return self._next(func, q_, k_, v_, args[3], mask_, *args[5:], **kwargs)
            return self._next(func, q_, k_, v_, *args[3:], **({**kwargs, "mask": mask_} if mask is not None
                                                               else kwargs))

        out, _ = self.host.run.joint_attention(q, k, v, call, attend, mask)
        return out


def install_joint(model_patcher, host: HostRun, text_tokens: int) -> None:
    """Patch a (cloned) Flux, Chroma or SD3 ModelPatcher whose prompts are `text_tokens` tokens long."""
    patch_size = model_patcher.model.model_config.unet_config.get("patch_size", 2)
    options = model_patcher.model_options.setdefault("transformer_options", {})
    options["optimized_attention_override"] = JointAttentionOverride(
        host, text_tokens, patch_size, options.get("optimized_attention_override"))
    install_step_wrapper(model_patcher, host)
