"""P2PSampler (all in one, like KSampler) and P2PGuider (a GUIDER for SamplerCustomAdvanced): one run of the
source and every edit, through ComfyUI's own samplers."""

from __future__ import annotations

import math

import comfy.sample
import comfy.samplers
import comfy.utils
import latent_preview
import torch
from comfy_api.latest import io

from ..adapter.attention_view import DEFAULT_CAPTURE
from ..adapter.errors import check_schedule, input_error
from ..adapter.host_version import require_supported_host
from ..adapter.sampling import GUIDER_INPUTS, SAMPLER_INPUTS, EditGuider, intermediate
from ..adapter.unet import MIN_MAP_SIDE
from .sockets import CATEGORY, Attention, Capture, Edit, Inversion

__all__ = ["P2PSampler", "P2PGuider"]

CAPTURE_TOOLTIP = ("Which attention maps to capture (P2P Attention Capture). Unconnected: the paper's choice, the "
                   f"16x16-class layers of SD1.x (1/4 of the latent, or finer where that gives maps under "
                   f"{MIN_MAP_SIDE}x{MIN_MAP_SIDE}) over all steps.")
POSITIVE_TOOLTIP = ("Optional: a conditioning other nodes worked on (ControlNet Apply, Conditioning Set Area / "
                    "Mask / Timestep Range, hooks). Its text is replaced by the edit's prompts; everything applied "
                    "to it goes to the source and every edit. One conditioning, not a combination.")
INVERSION_TOOLTIP = ("From P2P Invert: edit a real image. The source then reproduces the image and every edit "
                     "starts from its inverted noise. Needs a deterministic sampler and the inversion's steps and "
                     "scheduler.")


def _guider_inputs() -> list:
    """The inputs P2PSampler and P2PGuider share, in their order."""
    return [
        io.Model.Input("model", tooltip=(
            "An SD1.x, SD2.x or SDXL model (LoRAs and other patches are kept), or Flux / Chroma / SD3, edited through "
            "their joint attention.")),
        Edit.Input("edit", tooltip="The source prompt and the edits, from P2PEditSpec."),
        io.Conditioning.Input("negative", tooltip="The negative prompt, shared by the source and every edit."),
    ]


CFG = io.Float.Input("cfg", default=7.5, min=0.0, max=100.0, step=0.1, round=0.01,
                     tooltip="Classifier-free guidance scale.")


class P2PSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="P2PSampler",
            display_name="P2P Sampler",
            category=CATEGORY,
            description="Samples the source prompt and every edited prompt side by side in one run, injecting the "
            "source's attention into the edits. Output: a latent batch, source first, then each edit.",
            inputs=[
                *_guider_inputs(),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="The noise seed, shared by the source and every edit."),
                io.Int.Input("steps", default=30, min=1, max=10000, tooltip="Sampling steps."),
                CFG,
                io.Combo.Input("sampler_name", options=comfy.samplers.KSampler.SAMPLERS, default="euler", tooltip=(
                    "Any ComfyUI sampler. Ancestral and SDE samplers share their per-step noise across the batch.")),
                io.Combo.Input("scheduler", options=comfy.samplers.KSampler.SCHEDULERS, default="normal",
                               tooltip="Noise schedule."),
                io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Fraction of the schedule to run (below 1 for img2img)."),
                io.Latent.Input("latent_image", optional=True, tooltip=(
                    "One latent (batch size 1); every item starts from it. Not needed with an inversion.")),
                Inversion.Input("inversion", optional=True, tooltip=INVERSION_TOOLTIP),
                Capture.Input("capture", optional=True, tooltip=CAPTURE_TOOLTIP),
                io.Conditioning.Input("positive", optional=True, tooltip=POSITIVE_TOOLTIP),
            ],
            outputs=[
                io.Latent.Output(display_name="latent", tooltip=(
                    "The source latent followed by one latent per edit; decode to see them side by side.")),
                Attention.Output(display_name="attention", tooltip=(
                    "The cross-attention maps of every word (and self-attention maps) captured during sampling, for "
                    "P2P Attention Maps.")),
            ],
        )

    @classmethod
    def execute(cls, model, edit, negative, seed, steps, cfg, sampler_name, scheduler, denoise=1.0,
                latent_image=None, inversion=None, capture=DEFAULT_CAPTURE, positive=None) -> io.NodeOutput:
        node = "P2PSampler"
        require_supported_host(node)
        if not math.isfinite(denoise):
            raise input_error(node, "denoise", f"is {denoise}; it must be a finite number")
        if (latent_image is None) == (inversion is None):
            raise input_error(node, "latent_image", "connect either a latent_image (to generate) or an inversion "
                              "(to edit a real image), not both or neither")
        if inversion is not None and denoise != 1.0:
            raise input_error(node, "denoise", "must be 1.0 with an inversion (it covers the whole schedule)")
        guider = EditGuider(SAMPLER_INPUTS, model, edit, negative, cfg, inversion=inversion, capture=capture,
                            positive=positive, scheduler=scheduler)
        sigmas = comfy.samplers.KSampler(model, steps=steps, device=model.load_device, sampler=sampler_name,
                                         scheduler=scheduler, denoise=denoise, model_options=model.model_options).sigmas
        check_schedule(node, "scheduler", sigmas, f"'{scheduler}' gives no usable noise levels for {steps} steps")
        latent, noise = _start(model, edit.batch.size, latent_image, inversion, seed)
        callback = latent_preview.prepare_callback(model, sigmas.shape[-1] - 1)
        samples = guider.sample(noise, latent, comfy.samplers.sampler_object(sampler_name), sigmas,
                                denoise_mask=(latent_image or {}).get("noise_mask"), callback=callback,
                                disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed)
        out = {k: v for k, v in (latent_image or {}).items() if k not in ("samples", "batch_index")}
        out["samples"] = intermediate(samples)
        return io.NodeOutput(out, guider.runs[-1].attention)


def _start(model, size: int, latent_image: dict | None, inversion, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The one latent [1, C, H, W] the batch starts from and its noise, as a stock KSampler draws them for the
    whole batch: ComfyUI seeds the global RNG here, and patches that draw from it while sampling (ToMe does)
    then see the same state as in the stock run. With an inversion the guider starts from its noise instead."""
    if inversion is not None:
        shape = (1, *inversion.inversion.trajectory.shape[1:])
        return torch.zeros(shape), torch.zeros(shape)
    assert latent_image is not None  # execute takes exactly one of the two
    latent = latent_image["samples"]
    if latent.is_nested or latent.shape[0] != 1:
        raise input_error("P2PSampler", "latent_image", f"needs a batch of one latent, got {latent.shape[0]}; the "
                          "source and every edit are all made from that one latent")
    latent = comfy.sample.fix_empty_latent_channels(model, latent)
    batch = latent.repeat(size, *([1] * (latent.ndim - 1)))
    return latent, comfy.sample.prepare_noise(batch, seed)[:1]


class P2PGuider(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="P2PGuider",
            display_name="P2P Guider",
            category=CATEGORY,
            description="Prompt-to-Prompt as a guider for SamplerCustomAdvanced: with any noise, sampler and sigmas "
            "node it samples the source and every edit side by side (latent batch: source first, then each edit). "
            "The injection windows are fractions of the sigmas it is given. Its latent: one latent (batch size 1), or "
            "the batch an earlier P2P stage made (two-stage runs on SplitSigmas).",
            inputs=[
                *_guider_inputs(),
                CFG,
                Inversion.Input("inversion", optional=True, tooltip=INVERSION_TOOLTIP + " The sampler's noise and "
                                "latent are then not used (connect DisableNoise and any latent)."),
                Capture.Input("capture", optional=True, tooltip=CAPTURE_TOOLTIP + " P2P Guider Attention hands "
                              "the maps on."),
                io.Conditioning.Input("positive", optional=True, tooltip=POSITIVE_TOOLTIP),
            ],
            outputs=[io.Guider.Output(display_name="guider", tooltip=(
                "For SamplerCustomAdvanced; its output latent holds the source and every edit."))],
        )

    @classmethod
    def execute(cls, model, edit, negative, cfg, inversion=None, capture=DEFAULT_CAPTURE,
                positive=None) -> io.NodeOutput:
        require_supported_host("P2PGuider")
        return io.NodeOutput(EditGuider(GUIDER_INPUTS, model, edit, negative, cfg, inversion=inversion,
                                        capture=capture, positive=positive))
