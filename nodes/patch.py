"""Attention replace patches and the per-evaluation wrapper that drive an `EditRun` inside ComfyUI.

Installed on a clone of the MODEL by `P2PSampler`, only through ComfyUI's patch points:
3-tuple `attn1`/`attn2` replace patches for every transformer block, and a PREDICT_NOISE wrapper.
A replace patch another pack already set on a block is chained (see `AttentionPatch`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from comfy.ldm.modules.attention import optimized_attention
from comfy.patcher_extension import WrappersMP

from ..p2p import EditRun, LayerCall
from ..p2p.inversion import Inversion, trajectory_at
from .unet import AttentionSite

__all__ = ["HostRun", "install"]

log = logging.getLogger("prompt_to_prompt")
WRAPPER_KEY = "prompt_to_prompt"


@dataclass(eq=False)
class HostRun:
    """Per-run state on the host side: the engine's run and how to find our rows in a batch.

    Created by one P2PSampler execution and dropped with it.
    """

    run: EditRun
    sigmas: list[float]  # the schedule of this run
    positive_uuid: object = None  # set once the guider has converted the conditioning
    warned: set = field(default_factory=set)
    inversion: Inversion | None = None  # editing a real image: the source retraces this path
    null_patch: object = None  # null_text: the attn2 patch that carries each step's unconditional context

    def follow_inversion(self, x: torch.Tensor, sigma: float, step: int) -> torch.Tensor:
        """Before an evaluation: Direct inversion puts the source latent on the inverted path (so the attention
        it lends the edits is the real image's); null-text sets the step's unconditional context."""
        inv = self.inversion
        if inv is None:
            return x
        if self.null_patch is not None:
            self.null_patch.context = inv.null_contexts[min(step, inv.steps - 1)]
        if inv.method != "direct":
            return x
        x = x.clone()
        x[0] = trajectory_at(inv, sigma).to(x)
        return x

    def warn_once(self, key: str, message: str) -> None:
        if key not in self.warned:
            self.warned.add(key)
            log.warning(message)

    def __deepcopy__(self, memo):
        return self  # model_options are deep-copied on clone; the run must stay one object


class AttentionPatch:
    """A replace patch for one self- (attn1) or cross-attention (attn2) layer.

    With a `prior` (another pack's replace patch on the same block) the rows this patch does not
    change are the prior's output, and the rows it does change get the prior's contribution added:
    ours + (prior - standard attention). That keeps additive patches such as IPAdapter's working.
    """

    def __init__(self, host: HostRun, kind: str, site: AttentionSite, prior=None):
        self.host, self.kind, self.site, self.prior = host, kind, site, prior

    def __deepcopy__(self, memo):
        return self

    def _layout(self, q: torch.Tensor, extra: dict) -> LayerCall | None:
        host = self.host
        chunks, uuids = extra.get("cond_or_uncond") or [], extra.get("uuids") or []
        rows = q.shape[0]
        if not chunks or rows % len(chunks):
            return None
        size = rows // len(chunks)
        if size != host.run.batch.size or host.positive_uuid not in uuids:
            return None
        h, w = extra["activations_shape"][-2:]
        if q.shape[1] != h * w:
            return None
        source = uuids.index(host.positive_uuid) * size
        return LayerCall(
            source_row=source,
            edit_rows=tuple(range(source + 1, source + size)),
            heads=extra["n_heads"],
            spatial=(h, w),
            downsample=self.site.downsample,
            block=self.site.key[0],
            layer=self.site.key,
        )

    def __call__(self, q, k, v, extra_options):
        heads, precision = extra_options["n_heads"], extra_options.get("attn_precision")

        def attend(q_, k_, v_):
            return optimized_attention(q_, k_, v_, heads, attn_precision=precision, transformer_options=extra_options)

        call = self._layout(q, extra_options)
        if call is None:
            if extra_options.get("cond_or_uncond") and self.host.positive_uuid in (extra_options.get("uuids") or []):
                self.host.warn_once(
                    "layout",
                    f"Prompt-to-Prompt: attention batch layout {tuple(q.shape)} with chunks "
                    f"{extra_options.get('cond_or_uncond')} is not the expected one (another node may change "
                    "the batch); these layers run without editing",
                )
            return self.prior(q, k, v, extra_options) if self.prior else attend(q, k, v)
        edit = self.host.run.cross_attention if self.kind == "attn2" else self.host.run.self_attention
        out, changed = edit(q, k, v, call, attend)
        if self.prior is None:
            return out
        combined = self.prior(q, k, v, extra_options)
        if combined.shape != out.shape:
            raise RuntimeError(
                f"P2PSampler: the {self.kind} patch another node set on block {self.site.key} "
                f"({type(self.prior).__name__}) returned shape {tuple(combined.shape)} instead of "
                f"{tuple(out.shape)}; it cannot be combined with Prompt-to-Prompt"
            )
        if changed:
            rows = list(changed)
            combined[rows] = out[rows] + (combined[rows] - attend(q[rows], k[rows], v[rows]))
        return combined


def _existing_replace(model_options: dict, kind: str, key: tuple):
    table = model_options.get("transformer_options", {}).get("patches_replace", {}).get(kind, {})
    # ComfyUI tries the 3-tuple key first, then the 2-tuple one; chain whichever would have run.
    return table.get(key) or table.get(key[:2])


def install(model_patcher, host: HostRun, sites: list[AttentionSite]) -> None:
    """Patch a (cloned) ModelPatcher. Never call this on a MODEL that other nodes share."""
    for site in sites:
        for kind in ("attn1", "attn2"):
            prior = _existing_replace(model_patcher.model_options, kind, site.key)
            patch = AttentionPatch(host, kind, site, prior)
            model_patcher.set_model_patch_replace(patch, kind, *site.key)

    def predict_noise(executor, x, timestep, model_options, seed):
        run = host.run
        sigma = float(timestep.max())
        step = run.begin_evaluation(sigma, host.sigmas)
        x = host.follow_inversion(x, sigma, step)
        denoised = executor(run.blend_input(x), timestep, model_options, seed)
        return run.blend_output(denoised)

    model_patcher.add_wrapper_with_key(WrappersMP.PREDICT_NOISE, WRAPPER_KEY, predict_noise)
