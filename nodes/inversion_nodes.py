"""Real images: P2PInvert, P2PSaveInversion, P2PLoadInversion."""

from __future__ import annotations

import math

import comfy.samplers
from comfy_api.latest import io

from ..adapter.errors import input_error
from ..adapter.host_version import require_supported_host
from ..adapter.inversion import (
    FOLDER,
    InvertSettings,
    inversion_files,
    inversion_path,
    invert,
    load_inversion,
    require_finite,
    save_inversion,
)
from ..adapter.sampling import check_invertible
from ..p2p.inversion import METHODS
from .sockets import CATEGORY, Edit, Inversion

__all__ = ["P2PInvert", "P2PSaveInversion", "P2PLoadInversion"]


class P2PInvert(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="P2PInvert",
            display_name="P2P Invert (real image)",
            category=CATEGORY,
            description="Inverts a real image for Prompt-to-Prompt: finds the noise (and, for null_text, the "
            "per-step unconditional prompt) from which P2P Sampler regenerates it, so it can be edited like a "
            "generated one. The source prompt must describe the image.",
            inputs=[
                io.Model.Input("model", tooltip="The model you will edit with (SD1.x, SD2.x, SDXL, the demo model)."),
                io.Vae.Input("vae", tooltip="Its VAE, to encode the image."),
                io.Image.Input("image", tooltip=(
                    "One image, any size: it is centre-cropped (not resized) to the nearest multiple of the model's "
                    "size step (64 px for SD, 32 px for the demo model); the latent is that size divided by the "
                    "VAE's factor (8 for both).")),
                io.Conditioning.Input("negative", tooltip="The negative prompt you will sample with (usually empty)."),
                io.Int.Input("steps", default=50, min=1, max=1000,
                             tooltip="Sampling steps; P2P Sampler must use the same steps and scheduler."),
                io.Float.Input("cfg", default=7.5, min=0.0, max=100.0, step=0.1, round=0.01, tooltip=(
                    "The guidance scale you will sample with (null_text optimises for it; the others work with "
                    "any).")),
                io.Combo.Input("scheduler", options=comfy.samplers.KSampler.SCHEDULERS, default="normal",
                               tooltip="Noise schedule; P2P Sampler must use the same."),
                io.Combo.Input("method", options=list(METHODS), default="direct", tooltip=(
                    "direct: exact reconstruction, at the cost of one plain inversion (Ju et al. 2024). "
                    "null_text: optimises the unconditional prompt per step (Mokady et al. 2023; slow; UNets only). "
                    "negative_prompt: uses the source prompt as the negative when sampling (no optimisation). "
                    "ddim: plain DDIM inversion (plain Euler inversion on Flux, Chroma and SD3; drifts with "
                    "guidance).")),
                io.Int.Input("inner_steps", default=10, min=1, max=100,
                             tooltip="null_text: optimiser steps per sampling step at most."),
                io.Float.Input("early_stop", default=1e-5, min=0.0, max=1.0, step=1e-6, round=False, tooltip=(
                    "null_text: stop a step's optimisation below this loss (it grows along the steps, as in the "
                    "paper).")),
                io.Float.Input("learning_rate", default=1e-2, min=1e-5, max=1.0, step=1e-4, round=False, tooltip=(
                    "null_text: Adam's learning rate at the first step; it decays linearly to half over the "
                    "steps.")),
                Edit.Input("edit", optional=True, tooltip=(
                    "Its source prompt describes the image. Tip: use clip + source_prompt instead, so that changing "
                    "the edited prompt does not re-run the inversion.")),
                io.Clip.Input("clip", optional=True, tooltip="With source_prompt, when no edit is connected."),
                io.String.Input("source_prompt", multiline=True, default="", optional=True, tooltip=(
                    "What the image shows (the same text as P2P Edit Spec's source_prompt).")),
            ],
            outputs=[
                Inversion.Output(display_name="inversion", tooltip=(
                    "Connect to P2P Sampler's `inversion` input (and P2P Save Inversion to keep it).")),
                io.Image.Output(display_name="reconstruction", tooltip=(
                    "The source item as P2P Sampler will regenerate it (before any edit), for checking the "
                    "inversion.")),
            ],
        )

    @classmethod
    def execute(cls, model, vae, image, negative, steps, cfg, scheduler, method, inner_steps, early_stop,
                learning_rate, edit=None, clip=None, source_prompt="") -> io.NodeOutput:
        node = "P2PInvert"
        require_supported_host(node)
        check_invertible(node, model, method)
        for name, value in (("cfg", cfg), ("early_stop", early_stop), ("learning_rate", learning_rate)):
            if not math.isfinite(value):
                raise input_error(node, name, f"is {value}; it must be a finite number")
        positive, prompt = _source(node, edit, clip, source_prompt)
        if method == "null_text" and cfg == 1.0:
            raise input_error(node, "cfg", "null_text optimises the unconditional prompt, which guidance 1 does not "
                              "use; use direct, or the guidance you will sample with")
        if image.shape[0] != 1:
            raise input_error(node, "image", f"needs one image, got a batch of {image.shape[0]}")
        require_finite(node, "image", image, "holds")
        settings = InvertSettings(steps, cfg, scheduler, method, inner_steps, early_stop, learning_rate)
        return io.NodeOutput(*invert(node, model, vae, image, positive, prompt, negative, settings))


def _source(node, edit, clip, source_prompt):
    """The source prompt's conditioning and text: the edit's, or `source_prompt` encoded by `clip`."""
    if edit is not None:
        return edit.conditionings[0], edit.source_prompt
    if clip is None or not source_prompt.strip():
        raise input_error(node, "source_prompt", "connect an edit, or a clip and the source prompt that "
                          "describes the image")
    return clip.encode_from_tokens_scheduled(clip.tokenize(source_prompt)), source_prompt


class P2PSaveInversion(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="P2PSaveInversion",
            display_name="P2P Save Inversion",
            category=CATEGORY,
            description=f"Saves an inversion as a safetensors file in ComfyUI's output folder ({FOLDER}/).",
            is_output_node=True,
            inputs=[
                Inversion.Input("inversion", tooltip="From P2P Invert."),
                io.String.Input("filename_prefix", default="p2p_inversion", tooltip=(
                    "File name start; letters, digits, '.', '_' and '-' are kept, a number is appended.")),
            ],
            outputs=[],
        )

    @classmethod
    def execute(cls, inversion, filename_prefix) -> io.NodeOutput:
        return io.NodeOutput(ui={"text": [save_inversion("P2PSaveInversion", inversion, filename_prefix)]})


class P2PLoadInversion(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="P2PLoadInversion",
            display_name="P2P Load Inversion",
            category=CATEGORY,
            description=f"Loads an inversion saved by P2P Save Inversion (from ComfyUI's output folder, {FOLDER}/).",
            inputs=[io.Combo.Input("file", options=inversion_files(), tooltip=f"A file in output/{FOLDER}/.")],
            outputs=[Inversion.Output(display_name="inversion")],
        )

    @classmethod
    def fingerprint_inputs(cls, file):
        path = inversion_path(file)
        return path.stat().st_mtime if path.is_file() else float("nan")

    @classmethod
    def validate_inputs(cls, file):
        if not inversion_path(file).is_file():
            return f"P2PLoadInversion: input 'file': {file} is not in output/{FOLDER}/"
        return True

    @classmethod
    def execute(cls, file) -> io.NodeOutput:
        return io.NodeOutput(load_inversion("P2PLoadInversion", file))
