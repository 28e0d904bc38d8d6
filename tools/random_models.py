"""Randomly initialised SD1.x-, SD2.x- and SDXL-shaped models built from ComfyUI's own classes.

Tests run the real ComfyUI sampling path on these (tiny by default); benchmarks build them at full
size. Weights are seeded, so every build of a configuration is identical. No weights are downloaded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

__all__ = ["ModelShape", "SHAPES", "build_model", "build_clip", "build_vae", "build_controlnet", "write_lora",
           "write_hypernetwork", "randomize"]


@dataclass(frozen=True)
class ModelShape:
    family: str  # "sd15" | "sd2" | "sdxl"
    model_channels: int = 32
    channel_mult: tuple[int, ...] = (1, 2, 4)
    num_res_blocks: int = 1
    transformer_depth: tuple[int, ...] = (1, 1, 1)  # per level
    transformer_depth_middle: int = 1
    head_channels: int = 16  # SD2/SDXL: channels per head (heads vary); SD1: fixed head count below
    sd1_heads: int = 2
    text_width: int = 32  # hidden size of each text encoder
    text_layers: int = 3
    v_prediction: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def context_dim(self) -> int:
        return 2 * self.text_width if self.family == "sdxl" else self.text_width


SHAPES = {
    "sd15": ModelShape("sd15"),
    "sd2": ModelShape("sd2", v_prediction=True),
    "sdxl": ModelShape("sdxl", channel_mult=(1, 2, 4), transformer_depth=(0, 1, 2), transformer_depth_middle=2),
    # One attention head wider than the 77 text tokens: a layer's output then determines its attention map.
    "sd15-wide": ModelShape("sd15", model_channels=96, sd1_heads=1),
    # Channels in multiples of 64, the head width ComfyUI's ControlNet loader assumes for a UNet it does not know.
    "sd15-64": ModelShape("sd15", model_channels=64, sd1_heads=1),
    # Full-size shapes (for benchmarks): the real checkpoints' UNet configurations.
    "sd15-full": ModelShape("sd15", model_channels=320, channel_mult=(1, 2, 4, 4), num_res_blocks=2,
                            transformer_depth=(1, 1, 1, 0), sd1_heads=8, text_width=768, text_layers=12),
    "sdxl-full": ModelShape("sdxl", model_channels=320, channel_mult=(1, 2, 4), num_res_blocks=2,
                            transformer_depth=(0, 2, 10), transformer_depth_middle=10, head_channels=64,
                            text_width=1024, text_layers=3),  # 3: CLIP-L's output is its penultimate layer
}


def randomize(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Seeded initialisation of every parameter (ComfyUI's ops skip initialisation on purpose)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim >= 2:
                fan_in = math.prod(p.shape[1:])
                values = torch.randn(p.shape, generator=gen) / math.sqrt(fan_in)
            elif "norm" in name and name.endswith("weight"):
                values = 1.0 + 0.1 * torch.randn(p.shape, generator=gen)
            else:
                values = 0.02 * torch.randn(p.shape, generator=gen)
            p.copy_(values.to(p.dtype))
    return module


def _unet_config(shape: ModelShape) -> dict:
    levels = len(shape.channel_mult)
    per_input = [d for d in shape.transformer_depth for _ in range(shape.num_res_blocks)]
    # finest level first, as ComfyUI lists them
    per_output = [d for d in shape.transformer_depth for _ in range(shape.num_res_blocks + 1)]
    config = {
        "use_checkpoint": False,
        "image_size": 32,
        "use_spatial_transformer": True,
        "legacy": False,
        "in_channels": 4,
        "out_channels": 4,
        "model_channels": shape.model_channels,
        "num_res_blocks": [shape.num_res_blocks] * levels,
        "transformer_depth": per_input,
        "transformer_depth_output": per_output,
        "channel_mult": list(shape.channel_mult),
        "transformer_depth_middle": shape.transformer_depth_middle,
        "use_linear_in_transformer": shape.family != "sd15",
        "context_dim": shape.context_dim,
        "use_temporal_resblock": False,
        "use_temporal_attention": False,
    }
    if shape.family == "sdxl":
        config["num_classes"] = "sequential"
        config["adm_in_channels"] = shape.text_width + 6 * 256  # pooled clip_g output + size embeddings
    else:
        config["adm_in_channels"] = None
    config.update(shape.extra)
    return config


def build_model(shape: ModelShape | str = "sd15", seed: int = 0, dtype: torch.dtype = torch.float32):
    """A ComfyUI MODEL (ModelPatcher) with random weights."""
    import comfy.model_base
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models

    shape = SHAPES[shape] if isinstance(shape, str) else shape
    config_class = {
        "sd15": comfy.supported_models.SD15,
        "sd2": comfy.supported_models.SD20,
        "sdxl": comfy.supported_models.SDXL,
    }[shape.family]
    model_config = config_class(_unet_config(shape))
    if shape.family != "sd15":
        model_config.unet_config["num_heads"] = -1
        model_config.unet_config["num_head_channels"] = shape.head_channels
    else:
        model_config.unet_config["num_heads"] = shape.sd1_heads
    model_config.set_inference_dtype(dtype, None)
    model_type = comfy.model_base.ModelType.V_PREDICTION if shape.v_prediction else comfy.model_base.ModelType.EPS
    model_class = comfy.model_base.SDXL if shape.family == "sdxl" else comfy.model_base.BaseModel
    model = model_class(model_config, model_type=model_type, device="cpu")
    randomize(model.diffusion_model, seed)
    model.diffusion_model.to(dtype)
    return comfy.model_patcher.ModelPatcher(
        model,
        load_device=comfy.model_management.get_torch_device(),
        offload_device=comfy.model_management.unet_offload_device(),
    )


def _text_config(shape: ModelShape, pooled: bool) -> dict:
    config = {
        "hidden_size": shape.text_width,
        "intermediate_size": 2 * shape.text_width,
        "num_attention_heads": 2,
        "num_hidden_layers": shape.text_layers,
    }
    if pooled:
        config["projection_dim"] = shape.text_width
    return config


def build_clip(shape: ModelShape | str = "sd15", seed: int = 1):
    """A ComfyUI CLIP with the real tokenizers and a small random text transformer of the family's kind."""
    import comfy.sd
    import comfy.sd1_clip
    import comfy.sdxl_clip
    import comfy.supported_models_base
    import comfy.text_encoders.sd2_clip

    shape = SHAPES[shape] if isinstance(shape, str) else shape
    if shape.family == "sd15":
        target = comfy.supported_models_base.ClipTarget(comfy.sd1_clip.SD1Tokenizer, comfy.sd1_clip.SD1ClipModel)
        options = {"clip_l_model_config": _text_config(shape, True)}
    elif shape.family == "sd2":
        target = comfy.supported_models_base.ClipTarget(
            comfy.text_encoders.sd2_clip.SD2Tokenizer, comfy.text_encoders.sd2_clip.SD2ClipModel
        )
        options = {"clip_h_model_config": _text_config(shape, True)}
    else:
        target = comfy.supported_models_base.ClipTarget(comfy.sdxl_clip.SDXLTokenizer, comfy.sdxl_clip.SDXLClipModel)
        options = {
            "clip_l_model_config": _text_config(shape, True),
            "clip_g_model_config": _text_config(shape, True),
        }
    clip = comfy.sd.CLIP(target, model_options={**options, "dtype": torch.float32})
    randomize(clip.cond_stage_model, seed)
    return clip


def build_vae(seed: int = 2):
    """A TAESD-architecture VAE with random weights, loaded through ComfyUI's VAE class."""
    import comfy.sd
    import comfy.taesd.taesd

    taesd = randomize(comfy.taesd.taesd.TAESD(latent_channels=4), seed)
    return comfy.sd.VAE(sd=taesd.state_dict())


def build_controlnet(shape: ModelShape | str = "sd15-64", seed: int = 3):
    """A ControlNet for that UNet shape with random weights (its zero convolutions too, so that it acts), loaded
    from its state dict by ComfyUI's own loader, as a ControlNet file is."""
    import comfy.cldm.cldm
    import comfy.controlnet
    import comfy.ops

    shape = SHAPES[shape] if isinstance(shape, str) else shape
    config = _unet_config(shape)
    config.pop("out_channels")
    config.update(num_heads=-1, num_head_channels=64, hint_channels=3, operations=comfy.ops.disable_weight_init)
    control = randomize(comfy.cldm.cldm.ControlNet(**config), seed)
    return comfy.controlnet.load_controlnet_state_dict(control.state_dict())


def write_lora(path, shape: ModelShape | str = "sd15", seed: int = 4, rank: int = 4) -> None:
    """A LoRA file (ComfyUI's generic key format) for every attention projection of that random UNet."""
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(seed)
    unet = build_model(shape).model.diffusion_model.state_dict()
    tensors = {}
    for key, weight in unet.items():
        if ".attn" in key and ".to_" in key and key.endswith(".weight") and weight.ndim == 2:
            base = "diffusion_model." + key[: -len(".weight")]
            tensors[f"{base}.lora_down.weight"] = torch.randn(rank, weight.shape[1], generator=gen) / weight.shape[1]
            tensors[f"{base}.lora_up.weight"] = torch.randn(weight.shape[0], rank, generator=gen)
    save_file(tensors, str(path))


def write_hypernetwork(path, width: int = 32, seed: int = 5) -> None:
    """A hypernetwork file (the A1111 format ComfyUI's HypernetworkLoader reads) for text contexts of that width:
    per width, a small MLP for the keys and one for the values."""
    gen = torch.Generator().manual_seed(seed)

    def mlp():
        return {"linear.0.weight": torch.randn(2 * width, width, generator=gen) / width,
                "linear.0.bias": torch.zeros(2 * width),
                "linear.1.weight": torch.randn(width, 2 * width, generator=gen) / width,
                "linear.1.bias": torch.zeros(width)}

    torch.save({width: [mlp(), mlp()], "activation_func": "relu"}, str(path))


class RandomControlNetLoader:
    """A development node: a random ControlNet for the "sd15-64" random UNet."""

    CATEGORY = "prompt_to_prompt/dev"
    RETURN_TYPES = ("CONTROL_NET",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 3, "min": 0, "max": 2**31})}}

    def load(self, seed):
        return (build_controlnet("sd15-64", seed),)


class RandomModelLoader:
    """A development node (registered by tests and benchmarks, not shipped): random MODEL, CLIP and VAE."""

    CATEGORY = "prompt_to_prompt/dev"
    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "shape": (list(SHAPES), {"default": "sd15"}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 2**31}),
                "dtype": (["float32", "float16", "bfloat16"], {"default": "float32"}),
            }
        }

    def load(self, shape, seed, dtype):
        return (
            build_model(shape, seed, getattr(torch, dtype)),
            build_clip(shape, seed + 1),
            build_vae(seed + 2),
        )
