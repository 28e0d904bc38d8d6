"""StyleAligned on a ComfyUI MODEL: an attn1 replace patch on every UNet self-attention layer of the chosen blocks,
and, when the reference is a given picture, a PREDICT_NOISE wrapper that keeps item 0 on that picture's path.

The patch computes the stock attention of the whole batch first, so the reference item (item 0) is bit for bit
what the same batch gives without the patch; then it overwrites the sharing rows (`p2p.shared_attention`). A
replace patch another node set before is chained: unchanged rows get its output, shared rows get its
contribution added (shared + (prior - stock)).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from comfy.patcher_extension import WrappersMP

from ..p2p import P2PError
from ..p2p.inversion import Inversion, landing_prediction, trajectory_at
from ..p2p.joint import fused_lse_agrees
from ..p2p.schedule import sigma_after
from ..p2p.shared_attention import SharedAttentionSpec, shared_rows, sharing_rows
from .errors import input_error
from .patch import Prior, install_replace, layer_call
from .unet import AttentionSite, attention_sites

__all__ = ["NODE", "SPEC_KEY", "StyleAlignedPatch", "ReferencePin", "install_style_aligned", "reference_pin_of"]

log = logging.getLogger("prompt_to_prompt")
NODE = "P2PStyleAligned"
SPEC_KEY = "p2p_style_aligned"  # transformer_options entry: the spec and whether item 0 is pinned to a picture
WRAPPER_KEY = "p2p_style_aligned"
REFERENCE_NOISE_SEED = 0  # the fixed noise a reference latent is noised with at each level


class StyleAlignedPatch:
    """attn1 replace for one UNet block: item i of each conditioning chunk attends to that chunk's item 0 too."""

    def __init__(self, spec: SharedAttentionSpec, sites: dict[int, AttentionSite], priors: dict[int, Prior | None],
                 warned: set):
        self.spec, self.sites, self.priors, self.warned = spec, sites, priors, warned
        self.fused: dict[tuple, bool] = {}  # (device, dtype) -> whether the fused kernel's log-normaliser is usable

    def __deepcopy__(self, memo):
        return self

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self.warned:
            self.warned.add(key)
            log.warning(message)

    def _fused(self, x: torch.Tensor) -> bool:
        key = (x.device, x.dtype)
        if key not in self.fused:
            self.fused[key] = fused_lse_agrees(x.device, x.dtype)
        return self.fused[key]

    def __call__(self, q, k, v, extra_options):
        site, prior, attend = layer_call(self.sites, self.priors, extra_options)
        heads = extra_options["n_heads"]

        stock = attend(q, k, v)
        combined = stock if prior is None else prior(q, k, v, extra_options)
        if site is None or site.key[0] not in self.spec.blocks:
            return combined
        chunks = len(extra_options.get("cond_or_uncond") or []) or 1
        if q.shape[0] % chunks or q.shape != k.shape or combined.shape != stock.shape:
            self._warn_once("layout", f"{NODE}: attention batch layout {tuple(q.shape)} with "
                            f"{chunks} conditioning chunks is not the expected one (another node changes the batch); "
                            "these layers run without sharing")
            return combined
        batch = q.shape[0] // chunks
        pairs = sharing_rows(chunks, batch, self.spec.share_items)
        if not pairs:
            self._warn_once("alone", f"{NODE}: the batch has {batch} item(s) and none of them shares: the reference "
                            "is item 0, so make a batch of several latents (Empty Latent Image's batch_size)")
            return combined
        rows = [r for r, _ in pairs]
        # the merged path (weight not 0 or 1) from float32 queries and keys where the model asks for it
        upcast = extra_options.get("attn_precision") == torch.float32 and self.spec.reference_weight not in (0.0, 1.0)
        fused = self._fused(q.float() if upcast else q)
        shared = shared_rows(q, k, v, pairs, heads, self.spec, attend, fused=fused, upcast=upcast).to(stock.dtype)
        out = combined.clone() if combined is stock else combined
        out[rows] = shared if prior is None else shared + (combined[rows] - stock[rows])
        return out


@dataclass(eq=False)
class ReferencePin:
    """Keeps item 0 of the batch on a given picture's path: before each evaluation its latent is set to the path's
    at that noise level, and its prediction is the one whose deterministic step lands on the path's next latent,
    so the sampled item 0 is the picture (an inversion's reconstruction, or the latent itself)."""

    inversion: Inversion | None = None  # the path of an inverted picture
    latent: torch.Tensor | None = None  # [C, H, W] a LATENT's samples, noised with fixed noise per level
    input_name: str = "reference_inversion"

    def __deepcopy__(self, memo):
        return self

    def path_at(self, sigma: float, x: torch.Tensor, model) -> torch.Tensor:
        """[C, H, W]: the reference's latent at noise level sigma, in x's device and dtype (`model`: the
        sampled BaseModel, whose latent format and noise scaling a LATENT goes through)."""
        if self.inversion is not None:
            return trajectory_at(self.inversion, sigma).to(x)
        assert self.latent is not None  # the node gives an inversion or a latent
        clean = model.process_latent_in(self.latent[None].float())  # [1, C, H, W]
        noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(REFERENCE_NOISE_SEED))
        level = torch.tensor([sigma], dtype=torch.float32)
        return model.model_sampling.noise_scaling(level, noise, clean)[0].to(x)

    def __call__(self, executor, x, timestep, model_options, seed):
        reference = self.inversion.trajectory[0] if self.inversion is not None else self.latent
        assert reference is not None  # the node gives one of the two
        if tuple(reference.shape) != tuple(x.shape[1:]):
            c, h, w = reference.shape
            raise input_error(NODE, self.input_name, f"is a {c}-channel {w}x{h} latent; the batch being sampled is "
                              f"{x.shape[1]}-channel {x.shape[-1]}x{x.shape[-2]}: use the same size")
        model = executor.class_obj.inner_model  # the guider's BaseModel
        sigma = float(timestep.max())
        sigmas = [float(s) for s in model_options.get("transformer_options", {}).get("sample_sigmas", [])]
        sigma_next = sigma_after(sigma, sigmas)
        x = x.clone()
        x[0] = self.path_at(sigma, x, model)
        denoised = executor(x, timestep, model_options, seed).clone()
        denoised[0] = landing_prediction(x[0], self.path_at(sigma_next, x, model), sigma, sigma_next)
        return denoised


def reference_pin_of(model_patcher) -> str | None:
    """The input a MODEL's StyleAligned patch takes its reference picture from, or None (no patch, or item 0)."""
    entry = model_patcher.model_options.get("transformer_options", {}).get(SPEC_KEY)
    return None if entry is None else entry[1]


def install_style_aligned(model_patcher, spec: SharedAttentionSpec, pin: ReferencePin | None):
    """A clone of `model_patcher` with StyleAligned installed."""
    try:
        sites = attention_sites(model_patcher)
    except ValueError as e:
        raise input_error(NODE, "model", f"{e}. StyleAligned here shares UNet self-attention; transformer models "
                          "(Flux, Chroma, SD3) are not supported yet") from None
    m = model_patcher.clone()
    warned: set = set()
    install_replace(m, "attn1", sites, lambda block_sites, priors: StyleAlignedPatch(spec, block_sites, priors, warned))
    m.model_options.setdefault("transformer_options", {})[SPEC_KEY] = (spec, None if pin is None else pin.input_name)
    if pin is not None:
        m.add_wrapper_with_key(WrappersMP.PREDICT_NOISE, WRAPPER_KEY, pin)
    return m


def parse_spec(layers: str, adain_mode: str, key_scale: float, reference_weight: float,
               share_items: tuple[int, ...] | None) -> SharedAttentionSpec:
    """The spec from the node's inputs; a bad value names its input (the spec's message starts with the field)."""
    try:
        return SharedAttentionSpec(layers=layers, adain=adain_mode, key_scale=key_scale,
                                   reference_weight=reference_weight, share_items=share_items)
    except P2PError as e:
        text = str(e)
        name = next((n for n in ("key_scale", "reference_weight", "layers", "adain") if text.startswith(n)),
                    "share_items")
        raise input_error(NODE, name, text) from None
