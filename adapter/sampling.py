"""One Prompt-to-Prompt run inside ComfyUI's sampling: the GUIDER that P2PSampler and P2PGuider share.

`EditGuider` is a CFGGuider over the source and every edit of an edit batch. Its `sample` takes what
SamplerCustomAdvanced hands a guider (one latent, its noise, any SAMPLER, any SIGMAS) and returns the batch
[source, edit 1, ..., edit N]: it repeats the latent and the first row of the noise for every item, makes
stochastic samplers share their per-step noise across the batch, and patches a clone of the model for this
run only. P2PSampler is the same guider driven with a KSampler's sigmas, sampler and noise.

The injection windows are fractions of the sigmas the guider is given: with SplitSigmas, each stage's own
steps (a guider on the second half of a split schedule counts its steps from the split).
"""

from __future__ import annotations

import collections
import dataclasses
import inspect
import logging
import math
from dataclasses import dataclass

import comfy.model_management
import comfy.samplers
import torch
from comfy.k_diffusion.sampling import BrownianTreeNoiseSampler, default_noise_sampler

from ..p2p import AttentionCapture, CaptureSpec, EditRun
from .attention_view import DEFAULT_CAPTURE, CapturedAttention
from .bundle import EditBundle
from .conditioning import conditioning_extras, crops_latent
from .dit import blend_layers, install_joint, joint_family
from .errors import check_schedule, input_error
from .inversion import (
    InversionBundle,
    NullContextPatch,
    check_inversion_model,
    deterministic_samplers,
    null_text_negative,
    same_schedule,
    start_at,
)
from .patch import HostRun, install
from .style_aligned import reference_pin_of
from .unet import UnsupportedModel, attention_sites, map_downsample

__all__ = ["InputNames", "SAMPLER_INPUTS", "GUIDER_INPUTS", "EditGuider", "RunOutput", "shared_noise_sampler",
           "check_invertible"]

log = logging.getLogger("prompt_to_prompt")
KEPT_RUNS = 4  # runs whose attention a guider keeps for P2P Guider Attention (one guider, several samplers)


@dataclass(frozen=True)
class InputNames:
    """What a run's errors call the inputs behind them: P2PSampler's own widgets, or, for P2PGuider, the
    sampler node's sockets."""

    node: str
    sampler: str
    schedule: str
    steps: str
    latent: str = "latent_image"


SAMPLER_INPUTS = InputNames("P2PSampler", sampler="sampler_name", schedule="scheduler", steps="steps")
GUIDER_INPUTS = InputNames("P2PGuider", sampler="sampler", schedule="sigmas", steps="sigmas")


@dataclass(frozen=True, eq=False)
class RunOutput:
    samples: torch.Tensor  # [1+N, C, H, W]: what `sample` returned
    attention: CapturedAttention


def sampler_label(sampler) -> str:
    fn = getattr(sampler, "sampler_function", None)
    name = getattr(fn, "__name__", type(sampler).__name__)
    return name.removeprefix("sample_").removesuffix("_function")


def shared_noise_sampler(sampler):
    """The SAMPLER, drawing each step's noise once and giving it to every batch item.

    Ancestral and SDE samplers add fresh noise every step; drawn per item it would make the edits diverge from
    the source for no reason. The noise drawn is exactly what the same sampler draws for a single latent with
    the same seed, so the source item matches a plain run. Samplers that draw none come back unchanged.
    """
    fn = getattr(sampler, "sampler_function", None)
    if not isinstance(sampler, comfy.samplers.KSAMPLER) or fn is None:
        log.warning("Prompt-to-Prompt: the sampler %s is not one of ComfyUI's KSAMPLERs, so its per-step noise "
                    "cannot be shared across the batch; if it adds noise, the edits drift from the source",
                    type(sampler).__name__)
        return sampler
    if "noise_sampler" not in inspect.signature(fn).parameters:
        return sampler  # deterministic, or draws no per-step noise by default
    name = sampler_label(sampler)
    brownian = "_sde" in name and name != "er_sde"
    cpu_tree = not name.endswith("_gpu")

    def sample(model, x, sigmas, extra_args=None, callback=None, disable=None, **kwargs):
        seed = (extra_args or {}).get("seed")
        first = x[:1]
        if brownian:
            positive = sigmas[sigmas > 0]
            single = BrownianTreeNoiseSampler(first, positive.min(), sigmas.max(), seed=seed, cpu=cpu_tree)
        else:
            single = default_noise_sampler(first, seed=seed)
        kwargs.setdefault("noise_sampler",
                          lambda sigma, sigma_next: single(sigma, sigma_next).expand_as(x).contiguous())
        return fn(model, x, sigmas, extra_args=extra_args, callback=callback, disable=disable, **kwargs)

    return comfy.samplers.KSAMPLER(sample, sampler.extra_options, sampler.inpaint_options)


@dataclass(frozen=True, eq=False)
class _Start:
    """Where a run starts: the batch's latents and noise [1+N, C, H, W], and what the inversion changes."""

    latents: torch.Tensor
    noise: torch.Tensor
    negative: list
    denoise_mask: torch.Tensor | None
    inversion: InversionBundle | None


class EditGuider(comfy.samplers.CFGGuider):
    """GUIDER: the source prompt and every edit sampled side by side, the source's attention injected into the
    edits. Per-run state (the patched clone, the engine's run, the capture) lives in `sample` and goes with it."""

    def __init__(self, names: InputNames, model, edit: EditBundle, negative, cfg: float, *,
                 inversion: InversionBundle | None = None, capture: CaptureSpec | None = DEFAULT_CAPTURE,
                 positive=None, scheduler: str | None = None):
        """`scheduler`: the name of the scheduler the sigmas will come from, where one node makes both
        (P2PSampler), for its errors."""
        super().__init__(model)
        node = names.node
        if not math.isfinite(cfg):
            raise input_error(node, "cfg", f"is {cfg}; it must be a finite number")
        self.joint = joint_family(model)  # Flux, Chroma, SD3: joint attention; None: a UNet
        if self.joint is not None:
            self.sites = []
            _check_joint_run(node, self.joint, edit, inversion)
            if capture is not None and (capture.downsample is not None or capture.layers != DEFAULT_CAPTURE.layers):
                log.info("%s: on %s models every joint block is captured; the capture's resolution and layers "
                         "are for UNets", node, self.joint)
        else:
            try:
                self.sites = attention_sites(model)
            except UnsupportedModel as e:
                raise input_error(node, "model", str(e)) from None
            pinned = reference_pin_of(model)
            if pinned is not None:
                raise input_error(node, "model", f"carries a P2P Style Aligned patch whose reference comes from its "
                                  f"{pinned}; here the reference is the source item. Disconnect that input (to "
                                  f"edit a real picture, connect its inversion to {node}'s own inversion input)")
        width = edit.conditionings[0][0][0].shape[-1]
        config = model.model.model_config.unet_config
        expected = config.get("context_dim") or config.get("context_in_dim")
        if expected is not None and width != expected:
            raise input_error(node, "edit", f"the prompts were encoded by a text encoder of width {width}, but this "
                              f"model expects {expected}: encode them with the CLIP of the same checkpoint")
        if capture is not None and self.joint is None:
            classes = sorted({s.downsample for s in self.sites})
            if capture.downsample is not None and capture.downsample not in classes:
                raise input_error(node, "capture", f"this model has no attention layers at 1/{capture.downsample} "
                                  f"of the latent size; it has them at {', '.join(f'1/{c}' for c in classes)}")
        if inversion is not None:
            _check_inversion_model(node, inversion, edit, model)
        self.names, self.edit, self.negative, self.inversion, self.capture = names, edit, negative, inversion, capture
        self.scheduler = scheduler
        self.extras = None if positive is None else conditioning_extras(node, positive, edit)
        if self.extras is not None and capture is not None and crops_latent(self.extras):
            log.warning("%s: input 'positive' sets an area: the captured attention maps cover that area only, and "
                        "P2P Attention Maps draws them over the whole picture", node)
        self.set_cfg(cfg)
        self.runs: collections.deque[RunOutput] = collections.deque(maxlen=KEPT_RUNS)

    def attention_of(self, samples: torch.Tensor) -> CapturedAttention | None:
        """The attention captured by the run that returned these samples, or None if no kept run did."""
        for run in reversed(self.runs):
            if run.samples.shape == samples.shape and torch.equal(run.samples.to(samples), samples):
                return run.attention
        return None

    def sample(self, noise, latent_image, sampler, sigmas, denoise_mask=None, callback=None, disable_pbar=False,
               seed=None):
        names = self.names
        check_schedule(names.node, names.schedule, sigmas, "the schedule holds NaN or infinite noise levels: it")
        if sigmas.shape[-1] < 2:
            raise input_error(names.node, names.steps, "holds no step to sample (fewer than two noise levels)")
        start = self._start(noise, latent_image, sampler, sigmas, denoise_mask)
        num_steps = sigmas.shape[-1] - 1
        latent_side = min(latent_image.shape[-2:])
        # the UNet layers local blend reads, and the default capture too (None: a transformer, no UNet sites)
        blend_downsample = map_downsample(self.sites, latent_side) if self.sites else None
        recorder = None
        if self.capture is not None:
            prompts = (self.edit.batch.source, *(e.target for e in self.edit.batch.edits))
            downsample = 1 if blend_downsample is None else self.capture.downsample or blend_downsample
            recorder = AttentionCapture(self.capture, prompts, num_steps, downsample)
        joint_blend = None if self.joint is None else blend_layers(self.joint, self.model_patcher.model.model_config
                                                                    .unet_config)
        run = EditRun(self.edit.batch, num_steps=num_steps, blend_downsample=blend_downsample, capture=recorder,
                      blend_layers=joint_blend)
        inversion = None if start.inversion is None else start.inversion.inversion
        host = HostRun(run, sigmas.tolist(), inversion=inversion)
        patched = self.model_patcher.clone()
        if self.joint is not None:
            # the batch's text tokens: the longest prompt's (`EditBundle.positive` pads the others to it)
            install_joint(patched, host, text_tokens=max(c[0][0].shape[1] for c in self.edit.conditionings))
        else:
            install(patched, host, self.sites)
        if inversion is not None and inversion.method == "null_text":
            host.null_patch = NullContextPatch(names.node)
            patched.set_model_attn2_patch(host.null_patch)
        inner = comfy.samplers.CFGGuider(patched)
        inner.set_conds(self.edit.positive(self.extras), start.negative)
        inner.set_cfg(self.cfg)
        host.positive_uuid = inner.original_conds["positive"][0]["uuid"]
        samples = inner.sample(start.noise, start.latents, shared_noise_sampler(sampler), sigmas,
                               denoise_mask=start.denoise_mask, callback=callback, disable_pbar=disable_pbar, seed=seed)
        if inversion is not None and inversion.method == "direct":
            # the source is the inverted image itself (the end of its path), exactly
            samples[0] = self.model_patcher.model.process_latent_out(inversion.trajectory[-1:].float()).to(samples)[0]
        samples = run.blend_final(samples)
        latent_size = (samples.shape[-2], samples.shape[-1])
        maps = None if recorder is None else recorder.result(run.masks, latent_size=latent_size)
        self.runs.append(RunOutput(samples, CapturedAttention(maps, self.edit.split_words)))
        return samples

    def _start(self, noise, latent_image, sampler, sigmas, denoise_mask) -> _Start:
        size = self.edit.batch.size
        names = self.names
        if self.inversion is None:
            # one latent for every item, or one per item (the batch of an earlier P2P stage: a split schedule)
            if latent_image.is_nested or latent_image.shape[0] not in (1, size):
                raise input_error(names.node, names.latent, f"needs one latent, or one per item ({size}: the source "
                                  f"and each edit, as an earlier P2P stage makes them); got {latent_image.shape[0]}")
            repeat = (size // latent_image.shape[0], *([1] * (latent_image.ndim - 1)))
            shared = (size, *([1] * (latent_image.ndim - 1)))
            return _Start(latent_image.repeat(repeat), noise[:1].repeat(shared), self.negative, denoise_mask, None)
        bundle = _inversion_for_run(names, self.inversion, sigmas, self.cfg, sampler, self.scheduler)
        inv = bundle.inversion
        latents, noise = start_at(self.model_patcher, inv.noise[None].repeat(size, 1, 1, 1))
        negative = self.negative
        if inv.method == "negative_prompt":
            negative = self.edit.conditionings[0]  # the source prompt as the negative, for every item
        elif inv.method == "null_text" and inv.null_contexts is not None:  # Inversion requires them for null_text
            negative = null_text_negative(negative, inv.null_contexts)
        return _Start(latents, noise, negative, None, bundle)


def _check_joint_run(node: str, family: str, edit: EditBundle, inversion) -> None:
    """What the pack does not do on Flux, Chroma and SD3 is refused, naming the input that asks for it."""
    lengths = [c[0][0].shape[1] for c in edit.conditionings]
    prompts = (edit.batch.source, *(e.target for e in edit.batch.edits))
    if any(p.length != n for p, n in zip(prompts, lengths, strict=True)):
        # a text encoder layout `prompt_tokens` does not read: the words' columns are unknown
        where = (f"among their {max(lengths)} text tokens on {family} models (a text encoder layout the pack does "
                 "not read)")
        if len(set(lengths)) > 1:
            raise input_error(node, "edit", f"its prompts encode to {' and '.join(map(str, sorted(set(lengths))))} "
                              f"text tokens, and the pack cannot place their words {where}")
        word_inputs = [f"edit {e} uses {what}" for e, item in enumerate(edit.batch.edits, start=1)
                       for what, used in (("re-weighting (P2P Reweight)", item.weights),
                                          ("local blend (P2P Local Blend)", item.local_blend),
                                          ("word_schedule", item.word_windows)) if used]
        if word_inputs:
            raise input_error(node, "edit", f"{'; '.join(word_inputs)}, but the pack cannot place the words of "
                              f"these prompts {where}")
        log.warning("%s: the words of these prompts cannot be placed %s, so cross_replace is not applied", node,
                    where)
    if inversion is not None and inversion.inversion.method == "null_text":
        raise input_error(node, "inversion", f"is a null_text inversion, which {family} models cannot retrace (its "
                          "unconditional text is set through UNet cross-attention); invert with direct or ddim")


def check_invertible(node: str, model, method: str) -> None:
    """P2PInvert's model check: a UNet the pack edits, or Flux, Chroma and SD3 with the methods they retrace."""
    family = joint_family(model)
    if family is None:
        try:
            attention_sites(model)
        except UnsupportedModel as e:
            raise input_error(node, "model", str(e)) from None
    elif method == "null_text":
        raise input_error(node, "method", f"null_text sets the unconditional text through UNet cross-attention, "
                          f"which {family} models do not have; use direct, ddim or negative_prompt")


def _check_inversion_model(node: str, bundle: InversionBundle, edit: EditBundle, model) -> None:
    """An inversion made for another model is refused before any setting is blamed."""
    check_inversion_model(node, "inversion", bundle, model)
    inv = bundle.inversion
    if inv.null_contexts is not None:
        tokens, context_width = inv.null_contexts.shape[1:]
        expected = model.model.model_config.unet_config.get("context_dim")
        if expected is not None and context_width != expected:
            raise input_error(node, "inversion", f"its null-text contexts are {context_width} wide; this model's "
                              f"text contexts are {expected} wide: it was made with another model")
        chunk = edit.batch.source.chunk_length
        if tokens % chunk:
            raise input_error(node, "inversion", f"its null-text contexts have {tokens} tokens, not a whole "
                              f"number of the text encoder's {chunk}-token chunks: the file is damaged")
    if bundle.source_prompt and bundle.source_prompt.strip() != edit.source_prompt.strip():
        raise input_error(node, "edit", f'its source prompt "{edit.source_prompt}" is not the one the image was '
                          f'inverted with, "{bundle.source_prompt}"')


def _inversion_for_run(names: InputNames, bundle: InversionBundle, sigmas, cfg: float, sampler,
                       scheduler: str | None) -> InversionBundle:
    """The inversion with the run's own schedule, after checking the run can retrace it."""
    node, inv = names.node, bundle.inversion
    allowed = deterministic_samplers()
    if getattr(sampler, "sampler_function", None) not in {comfy.samplers.sampler_object(n).sampler_function
                                                          for n in allowed}:
        raise input_error(node, names.sampler, f"{sampler_label(sampler)} adds fresh noise at every step, or "
                          f"changes the schedule, so it cannot retrace an inversion; use a deterministic sampler: "
                          f"{', '.join(allowed)}")
    if sigmas.shape != inv.sigmas.shape:
        raise input_error(node, names.steps, f"the inversion was made with {inv.steps} steps and the "
                          f"'{bundle.scheduler}' scheduler; use the same here")
    if not same_schedule(sigmas.cpu().float(), inv.sigmas):
        if scheduler is None:  # sigmas from a scheduler node
            raise input_error(node, names.schedule, f"are not the schedule the inversion was made with (the "
                              f"'{bundle.scheduler}' scheduler over {inv.steps} steps, from noise level "
                              f"{float(inv.sigmas[0]):.4g}; these start at {float(sigmas[0]):.4g}): use "
                              "BasicScheduler with that scheduler and those steps, denoise 1")
        if bundle.scheduler and bundle.scheduler != scheduler:
            raise input_error(node, names.schedule, f"the inversion was made with the '{bundle.scheduler}' "
                              "scheduler; use the same here")
        raise input_error(node, "inversion", f"was made for another model's noise schedule (its first noise "
                          f"level is {float(inv.sigmas[0]):.4g}, this model's {float(sigmas[0]):.4g})")
    if inv.method == "null_text" and abs(cfg - inv.cfg) > 1e-6:
        raise input_error(node, "cfg", f"must be {inv.cfg:g}, the guidance the null-text inversion was "
                          "optimised for")
    # the run's own schedule, which the inversion's matches to the precision its file stored
    return dataclasses.replace(bundle, inversion=dataclasses.replace(inv, sigmas=sigmas.cpu().to(inv.sigmas)))


def intermediate(samples: torch.Tensor) -> torch.Tensor:
    return samples.to(comfy.model_management.intermediate_device())
