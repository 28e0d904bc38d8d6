"""P2PSampler: one sampling run of the source and every edit, through ComfyUI's own samplers."""

from __future__ import annotations

import dataclasses
import inspect
import math

import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.utils
import latent_preview
import torch
from comfy.k_diffusion.sampling import BrownianTreeNoiseSampler, default_noise_sampler

from ..p2p import AttentionCapture, CaptureSpec, EditRun
from .attention_nodes import DEFAULT_CAPTURE, P2P_ATTENTION, P2P_CAPTURE, CapturedAttention
from .bundle import P2P_EDIT, EditBundle
from .errors import check_schedule, input_error
from .host_version import require_supported_host
from .inversion_nodes import (
    P2P_INVERSION,
    InversionBundle,
    NullContextPatch,
    deterministic_samplers,
    latent_multiple,
    null_text_negative,
)
from .patch import HostRun, install
from .unet import UnsupportedModel, attention_sites, nearest_downsample

__all__ = ["P2PSampler", "shared_noise_sampler"]


def shared_noise_sampler(sampler_name: str) -> comfy.samplers.KSAMPLER:
    """ComfyUI's sampler, drawing each step's noise once and giving it to every batch item.

    Ancestral and SDE samplers add fresh noise every step; drawn per item it would make the edits
    diverge from the source for no reason. The noise drawn is exactly what the same sampler draws for
    a single latent with the same seed, so the source item matches a plain KSampler run.
    """
    base = comfy.samplers.sampler_object(sampler_name)
    inner_fn = base.sampler_function
    if "noise_sampler" not in inspect.signature(inner_fn).parameters:
        return base  # deterministic, or draws no per-step noise by default
    brownian = "_sde" in sampler_name and sampler_name != "er_sde"
    cpu_tree = not sampler_name.endswith("_gpu")

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
        return inner_fn(model, x, sigmas, extra_args=extra_args, callback=callback, disable=disable, **kwargs)

    return comfy.samplers.KSAMPLER(sample, base.extra_options, base.inpaint_options)


class P2PSampler:
    DESCRIPTION = (
        "Samples the source prompt and every edited prompt side by side in one run, injecting the source's "
        "attention into the edits. Output: a latent batch, source first, then each edit."
    )
    CATEGORY = "prompt_to_prompt"
    RETURN_TYPES = ("LATENT", P2P_ATTENTION)
    RETURN_NAMES = ("latent", "attention")
    OUTPUT_TOOLTIPS = (
        "The source latent followed by one latent per edit; decode to see them side by side.",
        "The cross-attention maps of every word (and self-attention maps) captured during sampling, for "
        "P2P Attention Maps.",
    )
    FUNCTION = "sample"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "An SD1.x, SD2.x or SDXL model (LoRAs and other patches are kept)."}),
                "edit": (P2P_EDIT, {"tooltip": "The source prompt and the edits, from P2PEditSpec."}),
                "negative": ("CONDITIONING", {"tooltip": "The negative prompt, shared by the source and every edit."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True,
                                 "tooltip": "The noise seed, shared by the source and every edit."}),
                "steps": ("INT", {"default": 30, "min": 1, "max": 10000, "tooltip": "Sampling steps."}),
                "cfg": ("FLOAT", {"default": 7.5, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01,
                                  "tooltip": "Classifier-free guidance scale."}),
                "sampler_name": (comfy.samplers.KSampler.SAMPLERS, {"default": "euler", "tooltip":
                    "Any ComfyUI sampler. Ancestral and SDE samplers share their per-step noise across the batch."}),
                "scheduler": (comfy.samplers.KSampler.SCHEDULERS, {"default": "normal", "tooltip": "Noise schedule."}),
                "denoise": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                      "tooltip": "Fraction of the schedule to run (below 1 for img2img)."}),
            },
            "optional": {
                "latent_image": ("LATENT", {"tooltip": "One latent (batch size 1); every item starts from it. Not "
                                            "needed with an inversion."}),
                "inversion": (P2P_INVERSION, {"tooltip": "From P2P Invert: edit a real image. The source then "
                                              "reproduces the image and every edit starts from its inverted noise. "
                                              "Needs a deterministic sampler and the inversion's steps and "
                                              "scheduler."}),
                "capture": (P2P_CAPTURE, {"tooltip": "Which attention maps to capture for the `attention` output "
                                          "(P2P Attention Capture). Unconnected: the paper's choice, the 16x16-class "
                                          "layers of SD1.x (1/4 of the latent) over all steps."}),
            },
        }

    def sample(self, model, edit: EditBundle, negative, seed, steps, cfg, sampler_name, scheduler, denoise=1.0,
               latent_image=None, inversion: InversionBundle | None = None,
               capture: CaptureSpec | None = DEFAULT_CAPTURE):
        require_supported_host("P2PSampler")
        node = "P2PSampler"
        for name, value in (("cfg", cfg), ("denoise", denoise)):
            if not math.isfinite(value):
                raise input_error(node, name, f"is {value}; it must be a finite number")
        try:
            sites = attention_sites(model)
        except UnsupportedModel as e:
            raise input_error(node, "model", str(e)) from None
        width = edit.conditionings[0][0][0].shape[-1]
        expected = model.model.model_config.unet_config.get("context_dim")
        if expected is not None and width != expected:
            raise input_error(node, "edit", f"the prompts were encoded by a text encoder of width {width}, but this "
                              f"model expects {expected}: encode them with the CLIP of the same checkpoint")
        if (latent_image is None) == (inversion is None):
            raise input_error(node, "latent_image", "connect either a latent_image (to generate) or an inversion "
                              "(to edit a real image), not both or neither")
        patched = model.clone()
        ksampler = comfy.samplers.KSampler(patched, steps=steps, device=patched.load_device, sampler=sampler_name,
                                           scheduler=scheduler, denoise=denoise, model_options=patched.model_options)
        sigmas = ksampler.sigmas
        check_schedule(node, sigmas, scheduler, steps)
        size = edit.batch.size
        if inversion is not None:
            self._check_inversion(node, inversion, edit, model, sigmas, cfg, sampler_name, scheduler, denoise)
            # the run's own schedule, which the inversion's matches to the precision its file stored
            inversion = dataclasses.replace(inversion, inversion=dataclasses.replace(
                inversion.inversion, sigmas=sigmas.cpu().to(inversion.inversion.sigmas)))
            start = model.model.process_latent_out(inversion.inversion.noise[None].float())
            latents = start.repeat(size, *([1] * (start.ndim - 1)))
            noise = torch.zeros_like(latents)  # the sampler starts exactly at the inverted noise
            latent_image, noise_mask = {"samples": start}, None
            if inversion.inversion.method == "negative_prompt":
                negative = edit.conditionings[0]  # the source prompt as the negative, for every item
            elif inversion.inversion.method == "null_text":
                negative = null_text_negative(negative, inversion.inversion.null_contexts)
        else:
            latent = latent_image["samples"]
            if latent.is_nested or latent.shape[0] != 1:
                raise input_error(node, "latent_image", f"needs a batch of one latent, got {latent.shape[0]}; the "
                                  "source and every edit are all made from that one latent")
            latent = comfy.sample.fix_empty_latent_channels(model, latent)
            latents = latent.repeat(size, *([1] * (latent.ndim - 1)))
            # Noise is drawn for the whole batch, as a stock KSampler on this batch draws it, and the source's
            # is shared: ComfyUI seeds the global RNG here, and patches that draw from it while sampling
            # (ToMe does) then see the same state as in the stock run.
            noise = comfy.sample.prepare_noise(latents, seed)[:1].repeat(size, *([1] * (latent.ndim - 1)))
            noise_mask = latent_image.get("noise_mask")
        num_steps = sigmas.shape[-1] - 1
        recorder = None
        if capture is not None:
            classes = sorted({s.downsample for s in sites})
            downsample = capture.downsample or nearest_downsample(sites)
            if downsample not in classes:
                raise input_error(node, "capture", f"this model has no attention layers at 1/{downsample} of the "
                                  f"latent size; it has them at {', '.join(f'1/{c}' for c in classes)}")
            prompts = (edit.batch.source, *(e.target for e in edit.batch.edits))
            recorder = AttentionCapture(capture, prompts, num_steps, downsample)
        run = EditRun(edit.batch, num_steps=num_steps, blend_downsample=nearest_downsample(sites), capture=recorder)
        host = HostRun(run, sigmas.tolist(), inversion=None if inversion is None else inversion.inversion)
        install(patched, host, sites)
        if inversion is not None and inversion.inversion.method == "null_text":
            host.null_patch = NullContextPatch(node)
            patched.set_model_attn2_patch(host.null_patch)

        guider = comfy.samplers.CFGGuider(patched)
        guider.set_conds(edit.positive(), negative)
        guider.set_cfg(cfg)
        host.positive_uuid = guider.original_conds["positive"][0]["uuid"]

        callback = latent_preview.prepare_callback(patched, sigmas.shape[-1] - 1)
        samples = guider.sample(noise, latents, shared_noise_sampler(sampler_name), sigmas, denoise_mask=noise_mask,
                                callback=callback, disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed)
        if inversion is not None and inversion.inversion.method == "direct":
            # the source is the inverted image itself (the end of its path), exactly
            samples[0] = model.model.process_latent_out(inversion.inversion.trajectory[-1:].float()).to(samples)[0]
        samples = run.blend_final(samples).to(comfy.model_management.intermediate_device())
        out = {k: v for k, v in latent_image.items() if k not in ("samples", "batch_index")}
        out["samples"] = samples
        maps = recorder.result(run.masks) if recorder is not None else None
        return (out, CapturedAttention(maps, edit.split_words))

    @staticmethod
    def _check_inversion(node, bundle: InversionBundle, edit: EditBundle, model, sigmas, cfg, sampler_name,
                         scheduler, denoise):
        inv = bundle.inversion
        allowed = deterministic_samplers()
        if sampler_name not in allowed:
            raise input_error(node, "sampler_name", f"{sampler_name} adds fresh noise at every step, so it cannot "
                              f"retrace an inversion; use a deterministic sampler: {', '.join(allowed)}")
        if denoise != 1.0:
            raise input_error(node, "denoise",
                              "must be 1.0 with an inversion (the inversion covers the whole schedule)")
        # the model first: an inversion made for another one would otherwise be blamed on the settings in use
        _, made_channels, height, width = inv.trajectory.shape
        channels = model.model.latent_format.latent_channels
        if made_channels != channels:
            raise input_error(node, "inversion", f"was made with a model of {made_channels} latent channels; "
                              f"this model has {channels}")
        latent_format = type(model.model.latent_format).__name__
        if bundle.latent_format and bundle.latent_format != latent_format:
            raise input_error(node, "inversion", f"was made with a model whose latents are {bundle.latent_format}'s; "
                              f"this model's are {latent_format}'s")
        multiple = latent_multiple(model)
        if height % multiple or width % multiple:
            raise input_error(node, "inversion", f"its latent is {width}x{height}, but this model's latent sides are "
                              f"multiples of {multiple}: it was made with another kind of model")
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
        if sigmas.shape != inv.sigmas.shape:
            raise input_error(node, "steps", f"the inversion was made with {inv.steps} steps and the "
                              f"'{bundle.scheduler}' scheduler; use the same here")
        if not _same_schedule(sigmas.cpu().float(), inv.sigmas):
            if bundle.scheduler and bundle.scheduler != scheduler:
                raise input_error(node, "scheduler", f"the inversion was made with the '{bundle.scheduler}' "
                                  "scheduler; use the same here")
            raise input_error(node, "inversion", f"was made for another model's noise schedule (its first noise "
                              f"level is {float(inv.sigmas[0]):.4g}, this model's {float(sigmas[0]):.4g})")
        if bundle.source_prompt and bundle.source_prompt.strip() != edit.source_prompt.strip():
            raise input_error(node, "edit", f'its source prompt "{edit.source_prompt}" is not the one the image was '
                              f'inverted with, "{bundle.source_prompt}"')
        if inv.method == "null_text" and abs(cfg - inv.cfg) > 1e-6:
            raise input_error(node, "cfg", f"must be {inv.cfg:g}, the guidance the null-text inversion was "
                              "optimised for")


def _same_schedule(schedule: torch.Tensor, stored: torch.Tensor) -> bool:
    """The run's schedule is the inversion's, to the precision its file stored it at: a file saved at half
    precision holds values exact in it."""
    rtol = next((torch.finfo(dtype).eps for dtype in (torch.bfloat16, torch.float16)
                 if torch.equal(stored.to(dtype).to(stored), stored)), 1e-5)
    return torch.allclose(schedule, stored.to(schedule), rtol=rtol)
