"""P2PSampler: one sampling run of the source and every edit, through ComfyUI's own samplers."""

from __future__ import annotations

import inspect

import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.utils
import latent_preview
from comfy.k_diffusion.sampling import BrownianTreeNoiseSampler, default_noise_sampler

from ..p2p import EditRun
from .bundle import P2P_EDIT, EditBundle
from .errors import input_error
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
        kwargs.setdefault("noise_sampler", lambda sigma, sigma_next: single(sigma, sigma_next).expand_as(x).contiguous())
        return inner_fn(model, x, sigmas, extra_args=extra_args, callback=callback, disable=disable, **kwargs)

    return comfy.samplers.KSAMPLER(sample, base.extra_options, base.inpaint_options)


class P2PSampler:
    DESCRIPTION = (
        "Samples the source prompt and every edited prompt side by side in one run, injecting the source's "
        "attention into the edits. Output: a latent batch, source first, then each edit."
    )
    CATEGORY = "prompt_to_prompt"
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    OUTPUT_TOOLTIPS = ("The source latent followed by one latent per edit; decode to see them side by side.",)
    FUNCTION = "sample"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "An SD1.x, SD2.x or SDXL model (LoRAs and other patches are kept)."}),
                "edit": (P2P_EDIT, {"tooltip": "The source prompt and the edits, from P2PEditSpec."}),
                "negative": ("CONDITIONING", {"tooltip": "The negative prompt, shared by the source and every edit."}),
                "latent_image": ("LATENT", {"tooltip": "One latent (batch size 1); every item starts from it."}),
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
            }
        }

    def sample(self, model, edit: EditBundle, negative, latent_image, seed, steps, cfg, sampler_name, scheduler,
               denoise=1.0):
        node = "P2PSampler"
        try:
            sites = attention_sites(model)
        except UnsupportedModel as e:
            raise input_error(node, "model", str(e)) from None
        width = edit.conditionings[0][0][0].shape[-1]
        expected = model.model.model_config.unet_config.get("context_dim")
        if expected is not None and width != expected:
            raise input_error(node, "edit", f"the prompts were encoded by a text encoder of width {width}, but this "
                              f"model expects {expected}: encode them with the CLIP of the same checkpoint")
        latent = latent_image["samples"]
        if latent.is_nested or latent.shape[0] != 1:
            raise input_error(node, "latent_image", f"needs a batch of one latent, got {latent.shape[0]}; the source "
                              "and every edit are all made from that one latent")
        latent = comfy.sample.fix_empty_latent_channels(model, latent)
        size = edit.batch.size
        noise = comfy.sample.prepare_noise(latent, seed).repeat(size, *([1] * (latent.ndim - 1)))
        latents = latent.repeat(size, *([1] * (latent.ndim - 1)))
        noise_mask = latent_image.get("noise_mask")

        patched = model.clone()
        ksampler = comfy.samplers.KSampler(patched, steps=steps, device=patched.load_device, sampler=sampler_name,
                                           scheduler=scheduler, denoise=denoise, model_options=patched.model_options)
        sigmas = ksampler.sigmas
        run = EditRun(edit.batch, num_steps=sigmas.shape[-1] - 1, blend_downsample=nearest_downsample(sites))
        host = HostRun(run, sigmas.tolist())
        install(patched, host, sites)

        guider = comfy.samplers.CFGGuider(patched)
        guider.set_conds(edit.positive(), negative)
        guider.set_cfg(cfg)
        host.positive_uuid = guider.original_conds["positive"][0]["uuid"]

        callback = latent_preview.prepare_callback(patched, sigmas.shape[-1] - 1)
        samples = guider.sample(noise, latents, shared_noise_sampler(sampler_name), sigmas, denoise_mask=noise_mask,
                                callback=callback, disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed)
        samples = run.blend_final(samples).to(comfy.model_management.intermediate_device())
        out = {k: v for k, v in latent_image.items() if k not in ("samples", "batch_index")}
        out["samples"] = samples
        return (out,)
