"""Attention replace patches and the per-evaluation wrapper that drive an `EditRun` inside ComfyUI.

Installed on a clone of the MODEL by `P2PSampler`, only through ComfyUI's patch points:
`attn1`/`attn2` replace patches for every UNet block with cross-attention, and a PREDICT_NOISE wrapper.
A replace patch another pack already set on a block is chained (see `AttentionPatch`); one set later
(at sampling time) runs instead of ours on its block.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from comfy.ldm.modules.attention import optimized_attention
from comfy.patcher_extension import WrappersMP

from ..p2p import EditRun, LayerCall
from ..p2p.inversion import Inversion, trajectory_at
from .inversion import NullContextPatch
from .unet import AttentionSite

__all__ = ["HostRun", "install", "install_replace", "install_step_wrapper", "layer_call", "Prior"]

log = logging.getLogger("prompt_to_prompt")
WRAPPER_KEY = "prompt_to_prompt"
Prior = Callable[..., torch.Tensor]  # another pack's replace patch: (q, k, v, extra_options) -> output


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
    latent_size: tuple[int, int] | None = None  # (H, W) of the latent being evaluated (MM-DiTs count tokens by it)
    null_patch: NullContextPatch | None = None  # null_text: the attn2 patch carrying each step's unconditional context

    def source_latent(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """[C, H, W]: the source's latent at this evaluation; with Direct inversion, the inverted path's."""
        inv = self.inversion
        if inv is None or inv.method != "direct":
            return x[0]
        return trajectory_at(inv, sigma).to(x)

    def follow_inversion(self, x: torch.Tensor, sigma: float, step: int) -> torch.Tensor:
        """Before an evaluation: Direct inversion puts the source latent on the inverted path (so the attention
        it lends the edits is the real image's); null-text sets the step's unconditional context."""
        inv = self.inversion
        if inv is None:
            return x
        if self.null_patch is not None and inv.null_contexts is not None:
            self.null_patch.context = inv.null_contexts[min(step, inv.steps - 1)]
        if inv.method != "direct":
            return x
        x = x.clone()
        x[0] = self.source_latent(x, sigma)
        return x

    def warn_once(self, key: str, message: str) -> None:
        if key not in self.warned:
            self.warned.add(key)
            log.warning(message)

    def __deepcopy__(self, memo):
        return self  # model_options are deep-copied on clone; the run must stay one object


class AttentionPatch:
    """A replace patch for the self- (attn1) or cross-attention (attn2) layers of one UNet block.

    Installed under ComfyUI's 2-part key (block, block id), so that a patch another node sets later at
    sampling time, under either key form, shadows this one and runs (PerturbedAttentionGuidance sets a
    2-part key inside its post-CFG function). The transformer index comes from the call's options.

    With a `prior` (another pack's replace patch on the same layer, set before this one) the rows this
    patch does not change are the prior's output, and the rows it does change get the prior's
    contribution added: ours + (prior - standard attention). That keeps additive patches such as
    IPAdapter's working.
    """

    def __init__(self, host: HostRun, kind: str, sites: dict[int, AttentionSite], priors: dict[int, Prior | None]):
        self.host, self.kind, self.sites, self.priors = host, kind, sites, priors

    def __deepcopy__(self, memo):
        return self

    def _layout(self, q: torch.Tensor, extra: dict, site: AttentionSite) -> LayerCall | None:
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
            downsample=site.downsample,
            block=site.key[0],
            layer=site.key,
        )

    def __call__(self, q, k, v, extra_options):
        site, prior, attend = layer_call(self.sites, self.priors, extra_options)

        call = None if site is None else self._layout(q, extra_options, site)
        if site is None or call is None:
            if extra_options.get("cond_or_uncond") and self.host.positive_uuid in (extra_options.get("uuids") or []):
                self.host.warn_once(
                    "layout",
                    f"Prompt-to-Prompt: attention batch layout {tuple(q.shape)} with chunks "
                    f"{extra_options.get('cond_or_uncond')} is not the expected one (another node changes the "
                    "batch, or merges tokens as ToMe does); these layers run without editing",
                )
            return prior(q, k, v, extra_options) if prior else attend(q, k, v)
        edit = self.host.run.cross_attention if self.kind == "attn2" else self.host.run.self_attention
        out, changed = edit(q, k, v, call, attend)
        if prior is None:
            return out
        combined = prior(q, k, v, extra_options)
        if combined.shape != out.shape:
            raise RuntimeError(
                f"P2PSampler: the {self.kind} patch another node set on block {site.key} "
                f"({type(prior).__name__}) returned shape {tuple(combined.shape)} instead of "
                f"{tuple(out.shape)}; it cannot be combined with Prompt-to-Prompt"
            )
        if changed:
            rows = list(changed)
            combined[rows] = out[rows] + (combined[rows] - attend(q[rows], k[rows], v[rows]))
        return combined


def install(model_patcher, host: HostRun, sites: list[AttentionSite]) -> None:
    """Patch a (cloned) UNet ModelPatcher. Never call this on a MODEL that other nodes share."""
    for kind in ("attn1", "attn2"):
        install_replace(model_patcher, kind, sites,
                        lambda block_sites, priors, kind=kind: AttentionPatch(host, kind, block_sites, priors))
    install_step_wrapper(model_patcher, host)


def layer_call(sites: dict[int, AttentionSite], priors: dict[int, Prior | None], extra_options: dict):
    """For a replace patch's call: the layer's site (None if not one of ours), the patch set before on it, and the
    host's own attention for this call (its backend, heads and precision)."""
    heads, precision = extra_options["n_heads"], extra_options.get("attn_precision")
    index = extra_options.get("block_index", 0)

    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return optimized_attention(q, k, v, heads, attn_precision=precision, transformer_options=extra_options)

    return sites.get(index), priors.get(index), attend


def install_replace(model_patcher, kind: str, sites: list[AttentionSite],
                    make: Callable[[dict[int, AttentionSite], dict[int, Prior | None]], object]) -> None:
    """Set a replace patch `make(sites by index, priors by index)` for `kind` ("attn1"/"attn2") on every block
    of `sites`, under the 2-part key, with the replace patch another node set there before as each site's prior.
    A 3-part key set before shadows the 2-part one for its layer: a patch takes its place and chains it."""
    blocks: dict[tuple, dict[int, AttentionSite]] = {}
    for site in sites:
        blocks.setdefault(site.key[:2], {})[site.key[2]] = site
    table = dict(model_patcher.model_options.get("transformer_options", {}).get("patches_replace", {}).get(kind, {}))
    for (block_name, block_id), block_sites in blocks.items():
        block_prior = table.get((block_name, block_id))
        model_patcher.set_model_patch_replace(make(block_sites, dict.fromkeys(block_sites, block_prior)), kind,
                                              block_name, block_id)
        for index, site in block_sites.items():
            if (block_name, block_id, index) in table:
                patch = make({index: site}, {index: table[(block_name, block_id, index)]})
                model_patcher.set_model_patch_replace(patch, kind, block_name, block_id, index)


def install_step_wrapper(model_patcher, host: HostRun) -> None:
    """The PREDICT_NOISE wrapper that tells the run which step each evaluation is, and blends latents."""

    def predict_noise(executor, x, timestep, model_options, seed):
        run = host.run
        sigma = float(timestep.max())
        step = run.begin_evaluation(sigma, host.sigmas)
        host.latent_size = (x.shape[-2], x.shape[-1])
        # In place: x is the sampler's own latent (ComfyUI hands it on unchanged unless a noise mask is set),
        # so local blend resets the state the sampler steps from, not a copy.
        run.blend_state(x, host.source_latent(x, sigma))
        denoised = executor(host.follow_inversion(x, sigma, step), timestep, model_options, seed)
        return run.blend_output(denoised)

    model_patcher.add_wrapper_with_key(WrappersMP.PREDICT_NOISE, WRAPPER_KEY, predict_noise)
