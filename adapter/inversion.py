"""Real images on the host: inverting one, the P2P_INVERSION value, its file format, and what a run checks.

The inversion runs inside ComfyUI's own sampling machinery: a KSAMPLER whose sampler function walks the
schedule backwards, so the model's conditioning (pooled outputs, SDXL size embeddings), patches and
device handling are ComfyUI's. Null-text optimisation needs gradients through the UNet; ComfyUI executes
nodes in inference mode, so it runs in a clone whose weights pass through identity weight wrappers
(ModelPatcher.add_weight_wrapper, as ComfyUI's own training node does), which gives it weights autograd
can use.
"""

from __future__ import annotations

import inspect
import re
import time
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import comfy.model_management
import comfy.model_sampling
import comfy.samplers
import comfy.utils
import torch

from ..p2p import P2PError
from ..p2p.inversion import Inversion, ddim_inversion, ddim_step, null_text_inversion
from .errors import check_schedule, input_error

__all__ = ["InversionBundle", "check_inversion_model", "InvertSettings", "invert", "deterministic_samplers",
           "NullContextPatch",
           "null_text_negative", "crop_to_fit", "latent_multiple", "flow_model", "save_inversion", "load_inversion",
           "inversion_files", "inversion_path", "same_schedule", "start_at", "FOLDER"]

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


@dataclass(frozen=True)
class InvertSettings:
    """P2PInvert's sampling and optimisation settings."""

    steps: int
    cfg: float
    scheduler: str
    method: str
    inner_steps: int
    early_stop: float
    learning_rate: float


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
    """The model's latent size step: its UNet halves the latent once per level but the last; a transformer
    (Flux, Chroma, SD3) cuts it into patches."""
    config = model.model.model_config.unet_config
    if "patch_size" in config and "channel_mult" not in config:
        return int(config["patch_size"])
    levels = len(config.get("channel_mult", (1, 2, 4, 4)))
    return 2 ** (levels - 1)


def check_inversion_model(node: str, input_name: str, bundle: InversionBundle, model) -> None:
    """Refuse an inversion made with a model of other latents (channels, latent format, latent size multiple)."""
    _, made_channels, height, width = bundle.inversion.trajectory.shape
    channels = model.model.latent_format.latent_channels
    if made_channels != channels:
        raise input_error(node, input_name, f"was made with a model of {made_channels} latent channels; "
                          f"this model has {channels}")
    latent_format = type(model.model.latent_format).__name__
    if bundle.latent_format and bundle.latent_format != latent_format:
        raise input_error(node, input_name, f"was made with a model whose latents are {bundle.latent_format}'s; "
                          f"this model's are {latent_format}'s")
    multiple = latent_multiple(model)
    if height % multiple or width % multiple:
        raise input_error(node, input_name, f"its latent is {width}x{height}, but this model's latent sides are "
                          f"multiples of {multiple}: it was made with another kind of model")


def start_at(model, start: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The LATENT samples and the noise with which a sampler's first latent is exactly `start` [B, C, H, W] (model
    space): a VP model's first latent is latent + sigma_0 * noise, so the noise is zero; a rectified flow's is
    sigma_0 * noise + (1 - sigma_0) * latent, so the noise is the start too."""
    latents = model.model.process_latent_out(start.float())
    return latents, start.float().clone() if flow_model(model) else torch.zeros_like(latents)


def flow_model(model) -> bool:
    """Whether the model is a rectified flow (Flux, Chroma, SD3): latents (1 - sigma) x0 + sigma eps."""
    return isinstance(model.get_model_object("model_sampling"), comfy.model_sampling.CONST)


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


def require_finite(node: str, input_name: str, tensor: torch.Tensor, what: str) -> None:
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


def _guided(model, positive, negative, cfg, latent, sigmas, fn):
    guider = comfy.samplers.CFGGuider(model)
    guider.set_conds(positive, negative)
    guider.set_cfg(cfg)
    return guider.sample(torch.zeros_like(latent), latent, _sampler_running(fn), sigmas, disable_pbar=True, seed=0)


def invert(node: str, model, vae, image: torch.Tensor, positive, prompt: str, negative,
           settings: InvertSettings) -> tuple[InversionBundle, torch.Tensor]:
    """Invert one image [1, H, W, C] for `prompt` (encoded as `positive`): the bundle and the reconstruction,
    decoded [1, h, w, 3]. `node` names the node in errors."""
    started = time.perf_counter()
    s = settings
    multiple = int(vae.downscale_ratio) * latent_multiple(model)
    if image.shape[1] < multiple or image.shape[2] < multiple:
        raise input_error(node, "image", f"is {image.shape[2]}x{image.shape[1]}, smaller than this model's "
                          f"smallest size ({multiple}x{multiple})")
    latent = vae.encode(crop_to_fit(image, multiple)[..., :3])  # [1, C, h, w] in the VAE's space
    ksampler = comfy.samplers.KSampler(model, steps=s.steps, device=model.load_device, sampler="euler",
                                       scheduler=s.scheduler, denoise=1.0, model_options=model.model_options)
    sigmas = ksampler.sigmas.cpu()
    check_schedule(node, "scheduler", sigmas, f"'{s.scheduler}' gives no usable noise levels for {s.steps} steps")
    progress = _Progress(s.steps * (2 if s.method == "null_text" else 1))
    path: dict = {}

    def walk(denoise, x, sigma_schedule):
        path["trajectory"] = ddim_inversion(denoise, x, sigma_schedule.to(x.device), on_step=progress,
                                            flow=flow_model(model))
        return path["trajectory"][0:1]

    # guidance 1: the conditional prediction alone, as DDIM inversion uses it
    _guided(model, positive, negative, 1.0, latent, sigmas, walk)
    trajectory = path["trajectory"]  # [steps + 1, C, h, w], model space
    require_finite(node, "model", trajectory, "predicted")
    passes, null_contexts, reconstruction = s.steps, None, latent  # direct: the source is the encoded image
    if s.method == "null_text":
        null_contexts, final, used = _null_text(node, model, positive, negative, latent, sigmas, trajectory, s,
                                                progress)
        reconstruction = model.model.process_latent_out(final.float())
        passes += used
    elif s.method in ("negative_prompt", "ddim"):
        reconstruction = _retrace(model, positive, negative, latent, sigmas, trajectory, s)
        passes += s.steps * (1 if s.method == "negative_prompt" or s.cfg == 1.0 else 2)
    require_finite(node, "model", reconstruction, "predicted")
    inversion = Inversion(s.method, sigmas, trajectory.float().cpu(), float(s.cfg),
                          None if null_contexts is None else null_contexts.float().cpu())
    bundle = InversionBundle(inversion, s.scheduler, prompt, latent.shape[1], passes, time.perf_counter() - started,
                             type(model.model.latent_format).__name__)
    decoded = vae.decode(reconstruction.to(torch.float32))
    return bundle, decoded[..., :3].clamp(0, 1)


def _retrace(model, positive, negative, latent, sigmas, trajectory, s: InvertSettings) -> torch.Tensor:
    """What sampling from the inverted noise gives with the negative_prompt or ddim method."""
    def retrace(denoise, x, sigma_schedule):
        levels = [float(sigma) for sigma in sigma_schedule]
        x = trajectory[0:1].to(x)
        for sigma, sigma_next in pairwise(levels):
            x = ddim_step(x, denoise(x, sigma), sigma, sigma_next)
        return x

    # negative_prompt: the source prompt as the negative, so guidance leaves the conditional prediction
    guide_negative = positive if s.method == "negative_prompt" else negative
    return _guided(model, positive, guide_negative, s.cfg, torch.zeros_like(latent), sigmas, retrace)


def _null_text(node, model, positive, negative, latent, sigmas, trajectory, s: InvertSettings, progress):
    patched = model.clone()
    _weights_for_autograd(patched)
    patch = NullContextPatch(node)
    patched.set_model_attn2_patch(patch)
    null0 = negative[0][0][0]  # [T, D]: the negative prompt's context starts the optimisation
    result: dict = {}

    def optimise(denoise, x, sigma_schedule):
        def guided(latent, sigma, context):
            patch.context = context
            return denoise(latent, sigma)

        with torch.inference_mode(False):  # clones made here are ordinary tensors autograd can save
            contexts, final, used = null_text_inversion(
                guided, trajectory.to(x).clone(), sigma_schedule.to(x.device), null0.clone(), s.inner_steps,
                s.early_stop, s.learning_rate, on_step=lambda i: progress(s.steps + i))
        result.update(contexts=contexts, final=final, used=used)
        return final

    _guided(patched, positive, null_text_negative(negative, null0[None]), s.cfg, latent, sigmas, optimise)
    return result["contexts"], result["final"], result["used"]


def same_schedule(schedule: torch.Tensor, stored: torch.Tensor) -> bool:
    """The run's schedule is the inversion's, to the precision its file stored it at: a file saved at half
    precision holds values exact in it."""
    rtol = next((torch.finfo(dtype).eps for dtype in (torch.bfloat16, torch.float16)
                 if torch.equal(stored.to(dtype).to(stored), stored)), 1e-5)
    return torch.allclose(schedule, stored.to(schedule), rtol=rtol)


# Files ---------------------------------------------------------------------------------------------------------

PREFIX_LENGTH = 80  # with the counter and extension, well within file systems' 255-byte names
_TENSORS = ("sigmas", "trajectory", "null_contexts")


def _folder() -> Path:
    import folder_paths

    return Path(folder_paths.get_output_directory()) / FOLDER


def inversion_files() -> list[str]:
    folder = _folder()
    return sorted(p.name for p in folder.glob("*.safetensors")) if folder.is_dir() else []


def inversion_path(file: str) -> Path:
    """The file of that name in the folder: the name only, never a path out of it."""
    return _folder() / Path(file).name


def _sanitise(name: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", name.strip()).strip("._")
    return cleaned[:PREFIX_LENGTH].rstrip("._") or "inversion"


def save_inversion(node: str, bundle: InversionBundle, filename_prefix: str) -> str:
    """Write the bundle to output/p2p_inversions/; returns its path relative to the output folder."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    folder = _folder()
    prefix = _sanitise(filename_prefix)
    inv = bundle.inversion
    tensors = {"sigmas": inv.sigmas.contiguous(), "trajectory": inv.trajectory.contiguous()}
    if inv.null_contexts is not None:
        tensors["null_contexts"] = inv.null_contexts.contiguous()
    metadata = {"format": "p2p_inversion", "version": FORMAT_VERSION, "method": inv.method, "cfg": repr(inv.cfg),
                "scheduler": bundle.scheduler, "source_prompt": bundle.source_prompt,
                "latent_channels": str(bundle.latent_channels), "latent_format": bundle.latent_format}
    name = f"{prefix}_#####.safetensors"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        counter = 1 + max((int(m.group(1)) for p in folder.glob(f"{prefix}_*.safetensors")
                           if (m := re.fullmatch(rf"{re.escape(prefix)}_(\d+)\.safetensors", p.name))), default=0)
        name = f"{prefix}_{counter:05d}.safetensors"
        save_file(tensors, str(folder / name), metadata=metadata)
    except (OSError, SafetensorError) as e:  # their messages carry the server's paths
        reason = e.strerror if isinstance(e, OSError) and e.strerror else "the file system refused it"
        raise input_error(node, "filename_prefix", f"cannot write output/{FOLDER}/{name}: {reason}") from None
    return f"{FOLDER}/{name}"


def load_inversion(node: str, file: str) -> InversionBundle:
    from safetensors import SafetensorError, safe_open

    name = Path(file).name
    # safetensors reads tensors and a JSON header only: nothing in the file is ever unpickled or run
    try:
        with safe_open(str(inversion_path(name)), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != "p2p_inversion":
                raise input_error(node, "file", f"{name} is not a P2P inversion (P2P Save Inversion makes them)")
            stored = set(f.keys())  # safe_open is not a mapping: no `in`
            tensors = {k: f.get_tensor(k) for k in _TENSORS if k in stored}
    except (OSError, SafetensorError):  # their messages carry the server's paths, or say "header too large"
        raise input_error(node, "file", f"{name} is not a safetensors file, or it is truncated") from None
    return _bundle_from_file(node, name, meta, tensors)


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
