"""Randomly initialised SD1.x-, SD2.x- and SDXL-shaped UNets and Flux-, Chroma- and SD3-shaped MM-DiTs, built from
ComfyUI's own classes, with text encoders of the family's kind driven by ComfyUI's real tokenizers.

Tests run the real ComfyUI sampling path on these (tiny by default); benchmarks build them at full
size. Weights are seeded, so every build of a configuration is identical. No weights are downloaded.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import torch

__all__ = ["ModelShape", "DiTShape", "SHAPES", "build_model", "build_clip", "build_vae", "build_controlnet",
           "write_lora", "write_hypernetwork", "randomize"]


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

    @property
    def latent_channels(self) -> int:
        return 4


@dataclass(frozen=True)
class DiTShape:
    """An MM-DiT: text and image tokens in one joint attention (text first).

    flux: Flux.1-dev (guidance-distilled: a guidance embedding, sampled at cfg 1), text = CLIP-L's pooled output (the
    modulation vector) and T5-XXL's tokens (padded to 256). chroma: Flux without CLIP, its modulations from an
    "approximator" MLP, real CFG, text = T5-XXL's tokens (unpadded). sd3: SD3's MMDiT, text = 77 CLIP-L+G tokens then
    T5-XXL's tokens (77), the pooled CLIP-L and CLIP-G outputs as the modulation vector.
    """

    family: str  # "flux" | "chroma" | "sd3"
    hidden_size: int = 64  # SD3: 64 * num_heads (MMDiT's heads are 64 wide)
    num_heads: int = 2
    depth: int = 2  # Flux/Chroma: double-stream blocks; SD3: joint blocks (the last one's text stream is pre-only)
    depth_single_blocks: int = 2  # Flux/Chroma: single-stream blocks
    axes_dim: tuple[int, ...] = (4, 14, 14)  # Flux/Chroma: RoPE widths (index, row, column); sum = head width
    mlp_ratio: float = 4.0
    guidance_embed: bool = True  # Flux: dev (guidance-distilled) or schnell
    approximator_width: int = 64  # Chroma: its modulation MLP (real: 5120 wide, 5 layers)
    approximator_layers: int = 2
    pos_embed_max_size: int = 64  # SD3: patches per side of its position table (real: 192)
    clip_width: int = 32  # CLIP-L's hidden size (Flux, SD3)
    clip_g_width: int = 32  # CLIP-G's hidden size (SD3)
    clip_layers: int = 3  # SD3 reads CLIP's penultimate layer
    t5_width: int = 64
    t5_heads: int = 2
    t5_ff: int = 128
    t5_layers: int = 2
    extra: dict = field(default_factory=dict)  # unet_config overrides

    @property
    def latent_channels(self) -> int:
        return 16


SHAPES: dict[str, ModelShape | DiTShape] = {
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
    # MM-DiTs (16-channel latents), tiny: a 4-step 64x64 sampling takes about a second on a CPU.
    "flux": DiTShape("flux"),
    "chroma": DiTShape("chroma"),
    "sd3": DiTShape("sd3", hidden_size=128, num_heads=2, depth=3),
    # The real transformers (Flux.1-dev: 11.9e9 parameters; SD3-medium: 2.0e9); the text encoders at their real
    # widths (so the text reaches the transformer at its real shape) but few layers.
    "flux-full": DiTShape("flux", hidden_size=3072, num_heads=24, depth=19, depth_single_blocks=38,
                          axes_dim=(16, 56, 56), clip_width=768, t5_width=4096, t5_heads=64, t5_ff=10240),
    "sd3-full": DiTShape("sd3", hidden_size=1536, num_heads=24, depth=24, pos_embed_max_size=192, clip_width=768,
                         clip_g_width=1280, t5_width=4096, t5_heads=64, t5_ff=10240),
    # Their blocks at full width but few of them (for benchmarks on a machine that cannot hold the whole model): every
    # block does the same attention work, so a per-step ratio against the stock run is the whole model's.
    "flux-blocks": DiTShape("flux", hidden_size=3072, num_heads=24, depth=1, depth_single_blocks=2,
                            axes_dim=(16, 56, 56), clip_width=768, t5_width=4096, t5_heads=64, t5_ff=10240),
    "sd3-blocks": DiTShape("sd3", hidden_size=1536, num_heads=24, depth=3, pos_embed_max_size=192, clip_width=768,
                           clip_g_width=1280, t5_width=4096, t5_heads=64, t5_ff=10240),
}


def randomize(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Seeded initialisation of every parameter (ComfyUI's ops skip initialisation on purpose)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim >= 2:
                fan_in = math.prod(p.shape[1:])
                values = torch.randn(p.shape, generator=gen) / math.sqrt(fan_in)
            elif "norm" in name and name.endswith(("weight", "scale")):  # "scale": the DiTs' RMSNorms
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


def build_model(shape: ModelShape | DiTShape | str = "sd15", seed: int = 0, dtype: torch.dtype = torch.float32):
    """A ComfyUI MODEL (ModelPatcher) with random weights."""
    import comfy.model_base
    import comfy.supported_models

    shape = SHAPES[shape] if isinstance(shape, str) else shape
    if isinstance(shape, DiTShape):
        return _build_dit(shape, seed, dtype)
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
    return _model_patcher(model)


def _model_patcher(model):
    """A MODEL as ComfyUI's loaders return one: the model on its load and offload devices."""
    import comfy.model_management
    import comfy.model_patcher

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


def build_clip(shape: ModelShape | DiTShape | str = "sd15", seed: int = 1):
    """A ComfyUI CLIP with the real tokenizers and a small random text transformer of the family's kind."""
    import comfy.sd
    import comfy.sd1_clip
    import comfy.sdxl_clip
    import comfy.supported_models_base
    import comfy.text_encoders.sd2_clip

    shape = SHAPES[shape] if isinstance(shape, str) else shape
    if isinstance(shape, DiTShape):
        return _build_dit_clip(shape, seed)
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


def build_vae(seed: int = 2, latent_channels: int = 4):
    """A TAESD-architecture VAE with random weights, loaded through ComfyUI's VAE class (which reads the latent
    channels, 4 for the UNets and 16 for the MM-DiTs, from the weights)."""
    import comfy.sd
    import comfy.taesd.taesd

    taesd = randomize(comfy.taesd.taesd.TAESD(latent_channels=latent_channels), seed)
    return comfy.sd.VAE(sd=taesd.state_dict())


def _dit_unet_config(shape: DiTShape) -> dict:
    """The unet_config ComfyUI's model detection (comfy/model_detection.py) finds in such a checkpoint."""
    if shape.family == "sd3":
        if shape.hidden_size != 64 * shape.num_heads:
            raise ValueError(f"SD3's MMDiT has 64-wide heads: hidden_size must be {64 * shape.num_heads}")
        side = shape.pos_embed_max_size
        config = {
            "in_channels": 16, "out_channels": 16, "patch_size": 2, "input_size": None,
            "depth": shape.num_heads,  # MMDiT derives its width (64 * depth) and heads (depth) from "depth"
            "num_blocks": shape.depth, "mlp_ratio": shape.mlp_ratio,
            "adm_in_channels": shape.clip_width + shape.clip_g_width,  # pooled CLIP-L + pooled CLIP-G
            "context_embedder_config": {"target": "torch.nn.Linear",
                                        "params": {"in_features": 4096, "out_features": shape.hidden_size}},
            "num_patches": side * side, "pos_embed_max_size": side, "pos_embed_scaling_factor": None,
            "x_block_self_attn_layers": [],
        }
    else:
        if shape.hidden_size // shape.num_heads != sum(shape.axes_dim):
            raise ValueError(f"the RoPE axes {shape.axes_dim} must add up to the head width")
        config = {
            "image_model": shape.family, "hidden_size": shape.hidden_size, "num_heads": shape.num_heads,
            "depth": shape.depth, "depth_single_blocks": shape.depth_single_blocks,
            "axes_dim": list(shape.axes_dim), "mlp_ratio": shape.mlp_ratio, "theta": 10000, "patch_size": 2,
            "qkv_bias": True, "context_in_dim": shape.t5_width,
        }
        if shape.family == "flux":
            config.update(in_channels=16, out_channels=16, vec_in_dim=shape.clip_width,
                          guidance_embed=shape.guidance_embed)
        else:  # chroma: its channels counted after patching
            config.update(in_channels=64, out_channels=64, in_dim=64, out_dim=shape.hidden_size,
                          hidden_dim=shape.approximator_width, n_layers=shape.approximator_layers)
    config.update(shape.extra)
    return config


def _dit_model_config(shape: DiTShape):
    import comfy.supported_models

    config_class = {
        "flux": comfy.supported_models.Flux if shape.guidance_embed else comfy.supported_models.FluxSchnell,
        "chroma": comfy.supported_models.Chroma,
        "sd3": comfy.supported_models.SD3,
    }[shape.family]
    return config_class(_dit_unet_config(shape))


def _build_dit(shape: DiTShape, seed: int, dtype: torch.dtype):
    import comfy.ldm.modules.diffusionmodules.mmdit

    model_config = _dit_model_config(shape)
    model_config.set_inference_dtype(dtype, None)
    model = model_config.get_model({}, device="cpu")  # the family's comfy.model_base class, as checkpoints load
    randomize(model.diffusion_model, seed)
    if shape.family == "sd3":  # a buffer, not a parameter: SD3's fixed 2D sin-cos position table
        side = shape.pos_embed_max_size
        table = comfy.ldm.modules.diffusionmodules.mmdit.get_2d_sincos_pos_embed(shape.hidden_size, side)
        with torch.no_grad():
            model.diffusion_model.pos_embed.copy_(torch.from_numpy(table).reshape(1, side * side, -1))
    model.diffusion_model.to(dtype)
    return _model_patcher(model)


def _clip_config(width: int, layers: int) -> dict:
    return {"hidden_size": width, "intermediate_size": 4 * width, "num_attention_heads": max(2, width // 64),
            "num_hidden_layers": layers}


def _t5_config(shape: DiTShape) -> dict:
    return {"d_model": shape.t5_width, "d_ff": shape.t5_ff, "num_heads": shape.t5_heads,
            "d_kv": shape.t5_width // shape.t5_heads, "num_layers": shape.t5_layers}


@functools.cache
def _sd3_clip_model():
    """ComfyUI's SD3 text encoder with a T5-XXL of any width: SD3ClipModel pads the CLIP-L+G tokens to T5-XXL's 4096
    channels and appends the T5 tokens, so a narrower T5's output is zero-padded to 4096 channels too (a no-op at
    the real width). Everything else is ComfyUI's own code."""
    import comfy.text_encoders.sd3_clip

    class PaddedT5XXLModel(comfy.text_encoders.sd3_clip.T5XXLModel):
        def encode_token_weights(self, token_weight_pairs):
            out = super().encode_token_weights(token_weight_pairs)
            return (torch.nn.functional.pad(out[0], (0, 4096 - out[0].shape[-1])), *out[1:])

    class SD3ClipModel(comfy.text_encoders.sd3_clip.SD3ClipModel):
        def __init__(self, device="cpu", dtype=None, model_options=None):
            model_options = model_options or {}
            super().__init__(t5=False, device=device, dtype=dtype, model_options=model_options)
            self.t5_attention_mask = False
            self.t5xxl = PaddedT5XXLModel(device=device, dtype=dtype, model_options=model_options)

    return SD3ClipModel


def _build_dit_clip(shape: DiTShape, seed: int):
    """The family's ComfyUI text encoder and tokenizer classes, their transformers shrunk through ComfyUI's
    `<model_name>_model_config` options (read by comfy.sd1_clip.SDClipModel over the config json)."""
    import comfy.sd
    import comfy.supported_models_base
    import comfy.text_encoders.flux
    import comfy.text_encoders.pixart_t5
    import comfy.text_encoders.sd3_clip

    options = {"t5xxl_model_config": _t5_config(shape)}
    if shape.family == "flux":
        target = comfy.supported_models_base.ClipTarget(comfy.text_encoders.flux.FluxTokenizer,
                                                        comfy.text_encoders.flux.flux_clip())
        options["clip_l_model_config"] = _clip_config(shape.clip_width, shape.clip_layers)
    elif shape.family == "chroma":  # what supported_models.Chroma.clip_target gives
        target = comfy.supported_models_base.ClipTarget(comfy.text_encoders.pixart_t5.PixArtTokenizer,
                                                        comfy.text_encoders.pixart_t5.pixart_te())
    else:
        target = comfy.supported_models_base.ClipTarget(comfy.text_encoders.sd3_clip.SD3Tokenizer, _sd3_clip_model())
        options["clip_l_model_config"] = _clip_config(shape.clip_width, shape.clip_layers)
        options["clip_g_model_config"] = _clip_config(shape.clip_g_width, shape.clip_layers)
    clip = comfy.sd.CLIP(target, model_options={**options, "dtype": torch.float32})
    randomize(clip.cond_stage_model, seed)
    return clip


def build_controlnet(shape: ModelShape | str = "sd15-64", seed: int = 3):
    """A ControlNet for that UNet shape with random weights (its zero convolutions too, so that it acts), loaded
    from its state dict by ComfyUI's own loader, as a ControlNet file is."""
    import comfy.cldm.cldm
    import comfy.controlnet
    import comfy.ops

    unet = SHAPES[shape] if isinstance(shape, str) else shape
    if not isinstance(unet, ModelShape):
        raise ValueError(f"no ControlNet for the {unet.family} MM-DiT: ControlNets are built for the UNet shapes")
    config = _unet_config(unet)
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
            build_vae(seed + 2, SHAPES[shape].latent_channels),
        )
