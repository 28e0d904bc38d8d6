"""Appearance transfer (cross-image attention, `p2p.cross_image`) sampled on a ComfyUI MODEL.

One run samples a batch of three: the output (item 0), the structure picture (1) and the appearance picture (2),
all from their inverted noise. Items 1 and 2 follow their inverted paths (set before every evaluation, their
predictions the ones that land on the path's next latent), so they lend the output the keys and values of the
real pictures. The output starts at the structure's inverted noise; an attn1 replace patch on the decoder's
self-attention gives its rows the appearance's keys and values in the swap steps, and a PREDICT_NOISE wrapper
sets its latent's channel statistics to the appearance's (AdaIN; within the two objects' masks when given) from
`adain_start` on and, with swap guidance, evaluates the model a second time without the swap and extrapolates
the output's prediction through the two.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import comfy.samplers
import comfy.utils
import latent_preview
import torch
from comfy.patcher_extension import WrappersMP

from ..p2p.cross_image import AppearanceSpec, contrasted_attention, latent_adain, swap_guided
from ..p2p.inversion import Inversion, landing_prediction, trajectory_at
from ..p2p.local_blend import region_mask
from ..p2p.schedule import sigma_after, step_of_sigma, steps_at
from ..p2p.spec import REGION_THRESHOLD
from .edits import mask_region
from .errors import input_error
from .inversion import InversionBundle, check_inversion_model, same_schedule, start_at
from .patch import Prior, install_replace, layer_call
from .unet import AttentionSite, attention_sites

__all__ = ["NODE", "OUTPUT", "STRUCTURE", "APPEARANCE", "TransferRun", "CrossImagePatch", "object_cells", "transfer"]

log = logging.getLogger("prompt_to_prompt")
NODE = "P2PAppearanceTransfer"
WRAPPER_KEY = "p2p_appearance_transfer"
OUTPUT, STRUCTURE, APPEARANCE = 0, 1, 2
ITEMS = 3


@dataclass(eq=False)
class TransferRun:
    """Per-run state, owned by one execution of the node: the spec, the two inverted paths, the schedule, the
    step being evaluated and whether this evaluation swaps (set by the wrapper, read by the attention patches)."""

    spec: AppearanceSpec
    structure: Inversion
    appearance: Inversion
    sigmas: list[float]
    cells: tuple[torch.Tensor, torch.Tensor] | None = None  # the two objects' latent cells [H, W] bool, or None
    step: int = 0
    swapping: bool = True
    warned: set = field(default_factory=set)

    def __deepcopy__(self, memo):
        return self

    @property
    def num_steps(self) -> int:
        return len(self.sigmas) - 1

    def __call__(self, executor, x, timestep, model_options, seed):
        """PREDICT_NOISE wrapper. x is the sampler's own latent (ComfyUI hands it on unchanged), so setting the
        pinned items and the output's AdaIN here changes the state the sampler steps from."""
        sigma = float(timestep.max())
        self.step = step_of_sigma(sigma, self.sigmas)
        sigma_next = sigma_after(sigma, self.sigmas)
        paths = {STRUCTURE: self.structure, APPEARANCE: self.appearance}
        for item, path in paths.items():
            x[item] = trajectory_at(path, sigma).to(x)
        if self.step >= steps_at(self.spec.adain_start, self.num_steps):
            cells, ref_cells = (c.to(x.device) for c in self.cells) if self.cells else (None, None)
            x[OUTPUT] = latent_adain(x[OUTPUT], x[APPEARANCE], cells, ref_cells)
        denoised = executor(x, timestep, model_options, seed).clone()
        strength = self.spec.swap_strength(self.step, self.num_steps)
        if strength != 1.0:
            self.swapping = False
            try:
                no_swap = executor(x, timestep, model_options, seed)
            finally:
                self.swapping = True
            denoised[OUTPUT] = swap_guided(no_swap[OUTPUT], denoised[OUTPUT], strength)
        # The output's prediction gets the structure's correction, the gap between what lands on its inverted path
        # and what the model predicted for it (as Direct Inversion corrects its source branch; the paper's
        # edit-friendly DDPM noise maps do the same): without the swap the output is the structure picture.
        landing = {item: landing_prediction(x[item], trajectory_at(path, sigma_next).to(x), sigma, sigma_next)
                   for item, path in paths.items()}
        denoised[OUTPUT] += landing[STRUCTURE] - denoised[STRUCTURE]
        for item, target in landing.items():
            denoised[item] = target
        return denoised


class CrossImagePatch:
    """attn1 replace for one decoder block: in the swap steps the output's rows of each conditioning chunk attend
    to that chunk's appearance row's keys and values; the other rows are untouched."""

    def __init__(self, run: TransferRun, sites: dict[int, AttentionSite], priors: dict[int, Prior | None]):
        self.run, self.sites, self.priors = run, sites, priors

    def __deepcopy__(self, memo):
        return self

    def __call__(self, q, k, v, extra_options):
        site, prior, attend = layer_call(self.sites, self.priors, extra_options)
        heads = extra_options["n_heads"]

        out = attend(q, k, v) if prior is None else prior(q, k, v, extra_options)
        run = self.run
        window = None if site is None else run.spec.window(site.downsample)
        if not run.swapping or window is None or not window.contains(run.step, run.num_steps):
            return out
        chunks = len(extra_options.get("cond_or_uncond") or []) or 1
        if q.shape[0] != chunks * ITEMS or q.shape != k.shape or out.shape != q.shape:
            if "layout" not in run.warned:
                run.warned.add("layout")
                log.warning("%s: attention batch layout %s with %d conditioning chunks is not the expected one "
                            "(another node changes the batch); these layers run without the swap", NODE,
                            tuple(q.shape), chunks)
            return out
        rows = [c * ITEMS + OUTPUT for c in range(chunks)]
        refs = [c * ITEMS + APPEARANCE for c in range(chunks)]
        if run.spec.contrast == 1.0:
            swapped = attend(q[rows], k[refs], v[refs])
        else:
            swapped = contrasted_attention(q[rows], k[refs], v[refs], heads, run.spec.contrast)
        swapped = swapped.to(out.dtype)
        if prior is not None:  # a prior's contribution to the output rows stays on top of the swap
            swapped = swapped + (out[rows] - attend(q[rows], k[rows], v[rows]))
        out = out.clone()
        out[rows] = swapped
        return out


def _check_inputs(model, structure: InversionBundle, appearance: InversionBundle) -> None:
    check_inversion_model(NODE, "structure", structure, model)
    check_inversion_model(NODE, "appearance", appearance, model)
    s, a = structure.inversion, appearance.inversion
    if tuple(a.trajectory.shape[1:]) != tuple(s.trajectory.shape[1:]):
        (_, _, ah, aw), (_, _, sh, sw) = a.trajectory.shape, s.trajectory.shape
        raise input_error(NODE, "appearance", f"its latent is {aw}x{ah}, the structure's {sw}x{sh}: invert pictures "
                          "of the same size")
    if a.steps != s.steps or not same_schedule(s.sigmas, a.sigmas):
        raise input_error(NODE, "appearance", f"was inverted with another schedule ({a.steps} steps, "
                          f"'{appearance.scheduler}') than the structure ({s.steps} steps, '{structure.scheduler}'): "
                          "invert both with the same steps and scheduler")


def object_cells(structure_mask: torch.Tensor | None, appearance_mask: torch.Tensor | None,
                 size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The two MASK inputs as the latent cells [H, W] bool of each picture's object, for masked AdaIN; None when
    neither is given."""
    masks = {"structure_mask": structure_mask, "appearance_mask": appearance_mask}
    if structure_mask is None and appearance_mask is None:
        return None
    cells = []
    for name, mask in masks.items():
        other = next(n for n in masks if n != name)
        if mask is None:
            raise input_error(NODE, name, f"is missing: masked AdaIN needs both objects' masks, and {other} is given")
        region = region_mask(mask_region(NODE, name, mask), size)[0, 0]  # [H, W] bool
        if int(region.sum()) < 2:
            raise input_error(NODE, name, f"covers {int(region.sum())} of the latent's {size[1]}x{size[0]} cells (a "
                              f"cell is in where the mask averages above {REGION_THRESHOLD}); masked AdaIN needs at "
                              "least two, to measure the object's spread")
        cells.append(region)
    return cells[0], cells[1]


def transfer(model, structure: InversionBundle, appearance: InversionBundle, positive, negative, sampler_name: str,
             spec: AppearanceSpec, structure_mask: torch.Tensor | None = None,
             appearance_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Sample the output beside the two retraced pictures: [3, C, H, W] (output, structure, appearance), in the
    LATENT's space. With both masks (MASK inputs, any size), AdaIN is masked to the two objects."""
    _check_inputs(model, structure, appearance)
    try:
        sites = attention_sites(model)
    except ValueError as e:
        raise input_error(NODE, "model", f"{e}. Appearance transfer here swaps UNet self-attention; transformer "
                          "models (Flux, Chroma, SD3) are not supported yet") from None
    s, a = structure.inversion, appearance.inversion
    cells = object_cells(structure_mask, appearance_mask, (s.trajectory.shape[-2], s.trajectory.shape[-1]))
    run = TransferRun(spec, s, a, [float(x) for x in s.sigmas], cells)
    patched = model.clone()
    decoder = [site for site in sites if site.key[0] == "output"]
    install_replace(patched, "attn1", decoder, lambda block_sites, priors: CrossImagePatch(run, block_sites, priors))
    patched.add_wrapper_with_key(WrappersMP.PREDICT_NOISE, WRAPPER_KEY, run)
    latents, noise = start_at(model, torch.stack([s.noise, s.noise, a.noise]))
    guider = comfy.samplers.CFGGuider(patched)
    guider.set_conds(positive, negative)
    guider.set_cfg(s.cfg)
    callback = latent_preview.prepare_callback(patched, run.num_steps)
    return guider.sample(noise, latents, comfy.samplers.sampler_object(sampler_name), s.sigmas.clone(),
                         callback=callback, disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=0)
