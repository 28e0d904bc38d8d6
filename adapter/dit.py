"""MM-DiT models (Flux, Chroma): where the source and the edits sit in their joint attention, and the attention
override that drives an `EditRun` there.

ComfyUI routes every attention call of these models through `transformer_options["optimized_attention_override"]`
(`override(func, *args, **kwargs)`). Flux's and Chroma's blocks call it with q, k, v [B, heads, T + I, d] (rotary
embedding applied, `skip_reshape=True`), the prompt's T text tokens first. An override another node set before
this one is chained: it gets the (injected) arguments in place of the attention function's.
"""

from __future__ import annotations

from ..p2p import JointCall
from .patch import HostRun, install_step_wrapper

__all__ = ["JOINT_FAMILIES", "joint_family", "install_joint"]

# ComfyUI's diffusion-model classes whose joint attention is laid out as Flux's: their family's name
JOINT_FAMILIES = {"Flux": "Flux", "Chroma": "Chroma"}


def joint_family(model_patcher) -> str | None:
    """"Flux" or "Chroma" for a model whose joint attention the pack edits, else None."""
    dm = model_patcher.get_model_object("diffusion_model")
    return JOINT_FAMILIES.get(type(dm).__name__)


class JointAttentionOverride:
    def __init__(self, host: HostRun, text_tokens: int, prior=None):
        self.host, self.text_tokens, self.prior = host, text_tokens, prior

    def __deepcopy__(self, memo):
        return self  # model_options are deep-copied on clone; the run must stay one object

    def _next(self, func, *args, **kwargs):
        return self.prior(func, *args, **kwargs) if self.prior is not None else func(*args, **kwargs)

    def _layout(self, q, options: dict, kwargs: dict) -> JointCall | None:
        host = self.host
        chunks, uuids = options.get("cond_or_uncond") or [], options.get("uuids") or []
        if not kwargs.get("skip_reshape") or q.ndim != 4 or not chunks or q.shape[0] % len(chunks):
            return None
        size = q.shape[0] // len(chunks)
        if size != host.run.batch.size or host.positive_uuid not in uuids or q.shape[2] <= self.text_tokens:
            return None
        source = uuids.index(host.positive_uuid) * size
        return JointCall(source, tuple(range(source + 1, source + size)), self.text_tokens)

    def __call__(self, func, *args, **kwargs):
        q, k, v = args[:3]
        call = self._layout(q, kwargs.get("transformer_options") or {}, kwargs)
        if call is None:
            return self._next(func, *args, **kwargs)

        def attend(q_, k_, v_):
            return self._next(func, q_, k_, v_, *args[3:], **kwargs)

        out, _ = self.host.run.joint_attention(q, k, v, call, attend)
        return out


def install_joint(model_patcher, host: HostRun, text_tokens: int) -> None:
    """Patch a (cloned) Flux or Chroma ModelPatcher whose prompts are `text_tokens` tokens long."""
    options = model_patcher.model_options.setdefault("transformer_options", {})
    options["optimized_attention_override"] = JointAttentionOverride(
        host, text_tokens, options.get("optimized_attention_override"))
    install_step_wrapper(model_patcher, host)
