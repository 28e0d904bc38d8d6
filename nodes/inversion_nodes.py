"""Real images: P2PInvert, P2PSaveInversion, P2PLoadInversion, and what P2PSampler does with an inversion.

The inversion runs inside ComfyUI's own sampling machinery: a KSAMPLER whose sampler function walks the
schedule backwards, so the model's conditioning (pooled outputs, SDXL size embeddings), patches and
device handling are ComfyUI's. Null-text optimisation needs gradients through the UNet; ComfyUI executes
nodes in inference mode, so it runs in a clone whose weights pass through identity weight wrappers
(ModelPatcher.add_weight_wrapper, as ComfyUI's own training node does), which gives it weights autograd
can use.
"""

from __future__ import annotations

import inspect
import math
import re
import time
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import comfy.model_management
import comfy.samplers
import comfy.utils
import torch

from ..p2p import P2PError
from ..p2p.inversion import METHODS, Inversion, ddim_inversion, ddim_step, null_text_inversion
from .bundle import P2P_EDIT, EditBundle
from .errors import check_schedule, input_error
from .host_version import require_supported_host
from .unet import UnsupportedModel, attention_sites

__all__ = ["P2P_INVERSION", "InversionBundle", "P2PInvert", "P2PSaveInversion", "P2PLoadInversion",
           "deterministic_samplers", "NullContextPatch", "null_text_negative", "crop_to_fit", "latent_multiple"]

P2P_INVERSION = "P2P_INVERSION"
FOLDER = "p2p_inversions"
FORMAT_VERSION = "1"


@dataclass(frozen=True, eq=False)
class InversionBundle:
    """P2P_INVERSION: the engine's inversion plus what the sampler checks it against."""

    inversion: Inversion
    scheduler: str
    source_prompt: str
    latent_channels: int
    passes: int = 0  # UNet passes per latent the inversion took (a backward pass counts as one)
    seconds: float = 0.0
    latent_format: str = ""  # the model's latent format (ComfyUI's class name, "SD15", "SDXL"); "" if unknown


def deterministic_samplers() -> list[str]:
    """ComfyUI samplers that add no noise while sampling and keep the scheduler's sigmas: the ones an
    inversion can be retraced with (dpm_2 and uni_pc drop a sigma from the schedule; dpm_fast and
    dpm_adaptive make their own)."""
    names = []
    for name in comfy.samplers.KSampler.SAMPLERS:
        if name in comfy.samplers.KSampler.DISCARD_PENULTIMATE_SIGMA_SAMPLERS:
            continue
        try:
            fn = comfy.samplers.sampler_object(name).sampler_function
        except Exception:  # noqa: BLE001 - a sampler ComfyUI cannot build here is not offered
            continue
        if "noise_sampler" not in inspect.signature(fn).parameters and name not in ("dpm_fast", "dpm_adaptive"):
            names.append(name)
    return names


def crop_to_fit(image: torch.Tensor, multiple: int) -> torch.Tensor:
    """[1, H, W, C] -> the centred crop whose sides are multiples of `multiple` (no resampling)."""
    _, h, w, _ = image.shape
    new_h, new_w = h // multiple * multiple, w // multiple * multiple
    top, left = (h - new_h) // 2, (w - new_w) // 2
    return image[:, top : top + new_h, left : left + new_w, :]


def latent_multiple(model) -> int:
    """The model's latent size step: its UNet halves the latent once per level but the last."""
    levels = len(model.model.model_config.unet_config.get("channel_mult", (1, 2, 4, 4)))
    return 2 ** (levels - 1)


def _size_multiple(model, vae) -> int:
    return int(vae.downscale_ratio) * latent_multiple(model)


class NullContextPatch:
    """attn2 patch: the unconditional rows attend to the current null-text context instead of the negative
    prompt's. `context` is set per step (and, while optimising, is a tensor with gradients). A context it
    cannot replace (another patch on the model reshaped it) is an error of `node`'s model: passing it through
    would silently drop the inversion's optimisation."""

    def __init__(self, node: str):
        self.context: torch.Tensor | None = None  # [T, D]
        self.node = node

    def __deepcopy__(self, memo):
        return self  # model_options are copied per sampling run; the patch must stay one object

    def __call__(self, n, context, value, extra_options):
        chunks = extra_options.get("cond_or_uncond") or []
        if self.context is None or 1 not in chunks:
            return n, context, value
        size = context.shape[0] // len(chunks)
        rows = [r for i, c in enumerate(chunks) if c == 1 for r in range(i * size, (i + 1) * size)]
        null = self.context.to(context)
        tokens, width = context.shape[1:]
        if width != null.shape[1] or tokens % null.shape[0]:
            raise input_error(self.node, "model", f"the null-text inversion's unconditional contexts "
                              f"({null.shape[0]} tokens of width {null.shape[1]}) do not fit this model's "
                              f"cross-attention context ({tokens} tokens of width {width})")
        null = null.repeat(tokens // null.shape[0], 1)  # ComfyUI pads a batch's contexts by repeating them
        replaced = torch.cat([null[None] if r in rows else context[r : r + 1] for r in range(context.shape[0])])
        return n, replaced, replaced if value is context else value


def null_text_negative(negative: list, null_contexts: torch.Tensor) -> list:
    """The negative CONDITIONING with each entry's text context shaped like the null-text contexts [N, T, D]
    (the first step's, [1, T, D]) and its other entries (pooled output, SDXL sizes) kept. NullContextPatch
    replaces that context at every step, so the negative's own text is never used; shaped so, ComfyUI batches
    it with the prompts at a token length T divides, whatever the length of the negative the sampler got."""
    return [[null_contexts[0][None].to(cond), extras] for cond, extras in negative]


def _require_finite(node: str, input_name: str, tensor: torch.Tensor, what: str) -> None:
    if not torch.isfinite(tensor).all():
        raise input_error(node, input_name, f"{what} NaN or infinite values")


class _Progress:
    """ComfyUI's progress bar over the inversion, checking the queue's cancel button at every step."""

    def __init__(self, total: int):
        self.bar = comfy.utils.ProgressBar(total)

    def __call__(self, done: int) -> None:
        comfy.model_management.throw_exception_if_processing_interrupted()
        self.bar.update_absolute(done)


def _sampler_running(fn) -> comfy.samplers.KSAMPLER:
    """A KSAMPLER whose sampler function is `fn(denoise, x, sigmas) -> latent`, with denoise(x, sigma)."""

    def sample(model, x, sigmas, extra_args=None, callback=None, disable=None, **_):
        extra = extra_args or {}

        def denoise(latent, sigma):
            return model(latent, latent.new_ones([latent.shape[0]]) * sigma, **extra)

        return fn(denoise, x, sigmas)

    return comfy.samplers.KSAMPLER(sample)


def _weights_for_autograd(model_patcher) -> None:
    """Identity weight wrappers on every weight of the UNet: ComfyUI then casts a fresh copy per use,
    which autograd accepts where the inference-mode originals are refused."""
    def same(weight):
        return weight

    dm = model_patcher.get_model_object("diffusion_model")
    for name, module in dm.named_modules():
        if hasattr(module, "weight_function"):
            for kind in ("weight", "bias"):
                if getattr(module, kind, None) is not None:
                    model_patcher.add_weight_wrapper(f"diffusion_model.{name}.{kind}", same)


class P2PInvert:
    DESCRIPTION = (
        "Inverts a real image for Prompt-to-Prompt: finds the noise (and, for null_text, the per-step "
        "unconditional prompt) from which P2P Sampler regenerates it, so it can be edited like a generated one. "
        "The source prompt must describe the image."
    )
    CATEGORY = "prompt_to_prompt"
    RETURN_TYPES = (P2P_INVERSION, "IMAGE")
    RETURN_NAMES = ("inversion", "reconstruction")
    OUTPUT_TOOLTIPS = (
        "Connect to P2P Sampler's `inversion` input (and P2P Save Inversion to keep it).",
        "The source item as P2P Sampler will regenerate it (before any edit), for checking the inversion.",
    )
    FUNCTION = "invert"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The model you will edit with (SD1.x, SD2.x, SDXL, the demo model)."}),
                "vae": ("VAE", {"tooltip": "Its VAE, to encode the image."}),
                "image": ("IMAGE", {"tooltip":
                    "One image, any size: it is centre-cropped (not resized) to the nearest multiple of the model's "
                    "size step (64 px for SD, 4 px for the demo model); the latent is that size divided by the "
                    "VAE's factor (8 for SD)."}),
                "negative": ("CONDITIONING", {"tooltip": "The negative prompt you will sample with (usually empty)."}),
                "steps": ("INT", {"default": 50, "min": 1, "max": 1000, "tooltip":
                    "Sampling steps; P2P Sampler must use the same steps and scheduler."}),
                "cfg": ("FLOAT", {"default": 7.5, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01, "tooltip":
                    "The guidance scale you will sample with (null_text optimises for it; the others work with any)."}),
                "scheduler": (comfy.samplers.KSampler.SCHEDULERS, {"default": "normal", "tooltip":
                    "Noise schedule; P2P Sampler must use the same."}),
                "method": (list(METHODS), {"default": "direct", "tooltip":
                    "direct: exact reconstruction, at the cost of one plain inversion (Ju et al. 2024). "
                    "null_text: optimises the unconditional prompt per step (Mokady et al. 2023; slow). "
                    "negative_prompt: uses the source prompt as the negative when sampling (no optimisation). "
                    "ddim: plain DDIM inversion (drifts with guidance)."}),
                "inner_steps": ("INT", {"default": 10, "min": 1, "max": 100, "tooltip":
                    "null_text: optimiser steps per sampling step at most."}),
                "early_stop": ("FLOAT", {"default": 1e-5, "min": 0.0, "max": 1.0, "step": 1e-6, "round": False,
                                         "tooltip": "null_text: stop a step's optimisation below this loss "
                                         "(it grows along the steps, as in the paper)."}),
                "learning_rate": ("FLOAT", {"default": 1e-2, "min": 1e-5, "max": 1.0, "step": 1e-4, "round": False,
                                            "tooltip": "null_text: Adam's learning rate at the first step; it "
                                            "decays linearly to half over the steps."}),
            },
            "optional": {
                "edit": (P2P_EDIT, {"tooltip":
                    "Its source prompt describes the image. Tip: use clip + source_prompt instead, so that changing "
                    "the edited prompt does not re-run the inversion."}),
                "clip": ("CLIP", {"tooltip": "With source_prompt, when no edit is connected."}),
                "source_prompt": ("STRING", {"multiline": True, "default": "", "tooltip":
                    "What the image shows (the same text as P2P Edit Spec's source_prompt)."}),
            },
        }

    def invert(self, model, vae, image, negative, steps, cfg, scheduler, method, inner_steps, early_stop,
               learning_rate, edit: EditBundle | None = None, clip=None, source_prompt=""):
        require_supported_host("P2PInvert")
        node = "P2PInvert"
        started = time.perf_counter()
        try:
            attention_sites(model)
        except UnsupportedModel as e:
            raise input_error(node, "model", str(e)) from None
        for name, value in (("cfg", cfg), ("early_stop", early_stop), ("learning_rate", learning_rate)):
            if not math.isfinite(value):
                raise input_error(node, name, f"is {value}; it must be a finite number")
        positive, prompt = self._source(node, edit, clip, source_prompt)
        if method == "null_text" and cfg == 1.0:
            raise input_error(node, "cfg", "null_text optimises the unconditional prompt, which guidance 1 does not "
                              "use; use direct, or the guidance you will sample with")
        if image.shape[0] != 1:
            raise input_error(node, "image", f"needs one image, got a batch of {image.shape[0]}")
        _require_finite(node, "image", image, "holds")
        multiple = _size_multiple(model, vae)
        if image.shape[1] < multiple or image.shape[2] < multiple:
            raise input_error(node, "image", f"is {image.shape[2]}x{image.shape[1]}, smaller than this model's "
                              f"smallest size ({multiple}x{multiple})")
        pixels = crop_to_fit(image, multiple)[..., :3]
        latent = vae.encode(pixels)  # [1, C, h, w] in the VAE's space
        ksampler = comfy.samplers.KSampler(model, steps=steps, device=model.load_device, sampler="euler",
                                           scheduler=scheduler, denoise=1.0, model_options=model.model_options)
        sigmas = ksampler.sigmas.cpu()
        check_schedule(node, sigmas, scheduler, steps)
        progress = _Progress(steps * (2 if method == "null_text" else 1))
        path: dict = {}

        def walk(denoise, x, sigma_schedule):
            path["trajectory"] = ddim_inversion(denoise, x, sigma_schedule.to(x.device), on_step=progress)
            return path["trajectory"][0:1]

        # guidance 1: the conditional prediction alone, as DDIM inversion uses it
        self._run(model, positive, negative, 1.0, latent, sigmas, walk)
        trajectory = path["trajectory"]  # [steps + 1, C, h, w], model space
        _require_finite(node, "model", trajectory, "predicted")
        passes, null_contexts, reconstruction = steps, None, latent  # direct: the source is the encoded image
        if method == "null_text":
            null_contexts, final, used = self._null_text(model, positive, negative, cfg, latent, sigmas, trajectory,
                                                         inner_steps, early_stop, learning_rate, progress, steps)
            reconstruction = model.model.process_latent_out(final.float())
            passes += used
        elif method in ("negative_prompt", "ddim"):
            def retrace(denoise, x, sigma_schedule):
                levels = [float(s) for s in sigma_schedule]
                x = trajectory[0:1].to(x)
                for sigma, sigma_next in pairwise(levels):
                    x = ddim_step(x, denoise(x, sigma), sigma, sigma_next)
                return x

            # negative_prompt: the source prompt as the negative, so guidance leaves the conditional prediction
            guide_negative = positive if method == "negative_prompt" else negative
            reconstruction = self._run(model, positive, guide_negative, cfg, torch.zeros_like(latent), sigmas, retrace)
            passes += steps * (1 if method == "negative_prompt" or cfg == 1.0 else 2)
        _require_finite(node, "model", reconstruction, "predicted")
        inversion = Inversion(method, sigmas, trajectory.float().cpu(), float(cfg),
                              None if null_contexts is None else null_contexts.float().cpu())
        bundle = InversionBundle(inversion, scheduler, prompt, latent.shape[1], passes, time.perf_counter() - started,
                                 type(model.model.latent_format).__name__)
        decoded = vae.decode(reconstruction.to(torch.float32))
        return (bundle, decoded[..., :3].clamp(0, 1))

    @staticmethod
    def _source(node, edit, clip, source_prompt):
        if edit is not None:
            return edit.conditionings[0], edit.source_prompt
        if clip is None or not source_prompt.strip():
            raise input_error(node, "source_prompt", "connect an edit, or a clip and the source prompt that "
                              "describes the image")
        tokens = clip.tokenize(source_prompt)
        return clip.encode_from_tokens_scheduled(tokens), source_prompt

    @staticmethod
    def _run(model, positive, negative, cfg, latent, sigmas, fn):
        guider = comfy.samplers.CFGGuider(model)
        guider.set_conds(positive, negative)
        guider.set_cfg(cfg)
        return guider.sample(torch.zeros_like(latent), latent, _sampler_running(fn), sigmas, disable_pbar=True, seed=0)

    def _null_text(self, model, positive, negative, cfg, latent, sigmas, trajectory, inner_steps, early_stop,
                   learning_rate, progress, steps):
        patched = model.clone()
        _weights_for_autograd(patched)
        patch = NullContextPatch("P2PInvert")
        patched.set_model_attn2_patch(patch)
        null0 = negative[0][0][0]  # [T, D]: the negative prompt's context starts the optimisation
        result: dict = {}

        def optimise(denoise, x, sigma_schedule):
            def guided(latent, sigma, context):
                patch.context = context
                return denoise(latent, sigma)

            with torch.inference_mode(False):  # clones made here are ordinary tensors autograd can save
                contexts, final, used = null_text_inversion(
                    guided, trajectory.to(x).clone(), sigma_schedule.to(x.device), null0.clone(), inner_steps,
                    early_stop, learning_rate, on_step=lambda i: progress(steps + i))
            result.update(contexts=contexts, final=final, used=used)
            return final

        self._run(patched, positive, null_text_negative(negative, null0[None]), cfg, latent, sigmas, optimise)
        return result["contexts"], result["final"], result["used"]


PREFIX_LENGTH = 80  # with the counter and extension, well within file systems' 255-byte names


def _sanitise(name: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", name.strip()).strip("._")
    return cleaned[:PREFIX_LENGTH].rstrip("._") or "inversion"


class P2PSaveInversion:
    DESCRIPTION = "Saves an inversion as a safetensors file in ComfyUI's output folder (p2p_inversions/)."
    CATEGORY = "prompt_to_prompt"
    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "save"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "inversion": (P2P_INVERSION, {"tooltip": "From P2P Invert."}),
            "filename_prefix": ("STRING", {"default": "p2p_inversion", "tooltip":
                "File name start; letters, digits, '.', '_' and '-' are kept, a number is appended."}),
        }}

    def save(self, inversion: InversionBundle, filename_prefix):
        import folder_paths
        from safetensors import SafetensorError
        from safetensors.torch import save_file

        folder = Path(folder_paths.get_output_directory()) / FOLDER
        prefix = _sanitise(filename_prefix)
        inv = inversion.inversion
        tensors = {"sigmas": inv.sigmas.contiguous(), "trajectory": inv.trajectory.contiguous()}
        if inv.null_contexts is not None:
            tensors["null_contexts"] = inv.null_contexts.contiguous()
        metadata = {"format": "p2p_inversion", "version": FORMAT_VERSION, "method": inv.method, "cfg": repr(inv.cfg),
                    "scheduler": inversion.scheduler, "source_prompt": inversion.source_prompt,
                    "latent_channels": str(inversion.latent_channels), "latent_format": inversion.latent_format}
        name = f"{prefix}_#####.safetensors"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            counter = 1 + max((int(m.group(1)) for p in folder.glob(f"{prefix}_*.safetensors")
                               if (m := re.fullmatch(rf"{re.escape(prefix)}_(\d+)\.safetensors", p.name))), default=0)
            name = f"{prefix}_{counter:05d}.safetensors"
            save_file(tensors, str(folder / name), metadata=metadata)
        except (OSError, SafetensorError) as e:  # their messages carry the server's paths
            reason = e.strerror if isinstance(e, OSError) and e.strerror else "the file system refused it"
            raise input_error("P2PSaveInversion", "filename_prefix", f"cannot write output/{FOLDER}/{name}: "
                              f"{reason}") from None
        return {"ui": {"text": [f"{FOLDER}/{name}"]}}


class P2PLoadInversion:
    DESCRIPTION = "Loads an inversion saved by P2P Save Inversion (from ComfyUI's output folder, p2p_inversions/)."
    CATEGORY = "prompt_to_prompt"
    RETURN_TYPES = (P2P_INVERSION,)
    RETURN_NAMES = ("inversion",)
    FUNCTION = "load"

    @classmethod
    def _folder(cls) -> Path:
        import folder_paths

        return Path(folder_paths.get_output_directory()) / FOLDER

    @classmethod
    def INPUT_TYPES(cls):
        folder = cls._folder()
        files = sorted(p.name for p in folder.glob("*.safetensors")) if folder.is_dir() else []
        return {"required": {"file": (files, {"tooltip": "A file in output/p2p_inversions/."})}}

    @classmethod
    def IS_CHANGED(cls, file):
        path = cls._folder() / Path(file).name
        return path.stat().st_mtime if path.is_file() else float("nan")

    @classmethod
    def VALIDATE_INPUTS(cls, file):
        if not (cls._folder() / Path(file).name).is_file():
            return f"P2PLoadInversion: input 'file': {file} is not in output/{FOLDER}/"
        return True

    def load(self, file):
        from safetensors import SafetensorError, safe_open

        node = "P2PLoadInversion"
        name = Path(file).name  # the name only: never a path out of the folder
        # safetensors reads tensors and a JSON header only: nothing in the file is ever unpickled or run
        try:
            with safe_open(str(self._folder() / name), framework="pt") as f:
                meta = f.metadata() or {}
                if meta.get("format") != "p2p_inversion":
                    raise input_error(node, "file", f"{name} is not a P2P inversion (P2P Save Inversion makes them)")
                stored = set(f.keys())  # safe_open is not a mapping: no `in`
                tensors = {k: f.get_tensor(k) for k in _TENSORS if k in stored}
        except (OSError, SafetensorError):  # their messages carry the server's paths, or say "header too large"
            raise input_error(node, "file", f"{name} is not a safetensors file, or it is truncated") from None
        return (_bundle_from_file(node, name, meta, tensors),)


_TENSORS = ("sigmas", "trajectory", "null_contexts")


def _bundle_from_file(node: str, name: str, meta: dict, tensors: dict) -> InversionBundle:
    def damaged(why: str) -> ValueError:
        return input_error(node, "file", f"{name} is damaged or from another version: {why}")

    if meta.get("version") != FORMAT_VERSION:
        raise input_error(node, "file", f"{name} has format version {meta.get('version')!r}; this version of the "
                          f"pack reads version {FORMAT_VERSION}")
    missing = [k for k in ("method", "cfg") if k not in meta] + [k for k in _TENSORS[:2] if k not in tensors]
    if missing:
        raise damaged(f"it has no {', '.join(missing)}")
    try:
        cfg = float(meta["cfg"])
    except ValueError:
        raise damaged(f"its cfg {meta['cfg'][:40]!r} is not a number") from None
    # the computation is float32 whatever the file stores; integers are not an inversion's and are refused below
    tensors = {k: t.float() if t.is_floating_point() else t for k, t in tensors.items()}
    try:
        inversion = Inversion(meta["method"][:40], tensors["sigmas"], tensors["trajectory"], cfg,
                              tensors.get("null_contexts"))
    except P2PError as e:
        raise damaged(str(e)) from None
    channels = inversion.trajectory.shape[1]
    if meta.get("latent_channels", str(channels)) != str(channels):
        raise damaged(f"its latent_channels {meta['latent_channels'][:40]!r} are not its trajectory's {channels}")
    return InversionBundle(inversion, meta.get("scheduler", ""), meta.get("source_prompt", ""), channels,
                           latent_format=meta.get("latent_format", ""))

