"""The demo models: small text-to-image models built only from ComfyUI's classes.

v1 (issue #3), built here:
* UNet: ComfyUI's `openaimodel.UNetModel` (through the SD1.5 model configuration, so ComfyUI's samplers
  and every patch point work unchanged), v-prediction on the SD1 noise schedule rescaled to zero terminal
  SNR, 3 pixel channels, 32x32, cross-attention at 16x16 and 8x8.
* Text encoder: ComfyUI's SD1 CLIP text model (`SD1ClipModel`), shrunk to 2 layers of width 64, driven by
  ComfyUI's real SD1 CLIP tokenizer.
* VAE: ComfyUI's pixel-space VAE (images are the latents, scaled to -1..1); needs ComfyUI >= 0.3.75.

v2 and v3 (issue #21; v3 is the committed model; `model_v2`): the same text encoder, a UNet with attention
at every resolution of the latent (v2: 8x8x4, v3: 16x16x4), and a TAESD-architecture autoencoder
(`autoencoder`). `load` reads any of them.
"""

from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["IMAGE_SIZE", "UNET_CONFIG", "TEXT_CONFIG", "WEIGHTS", "V1_WEIGHTS", "V2_WEIGHTS", "build_model",
           "build_clip", "build_vae", "load"]

IMAGE_SIZE = 32
# the committed model, which P2P Demo Model loads: v3 (issue #21, `model_v2`). The earlier ones are rebuilt by
# `python -m shapes_demo.train --model v1|v2` (their weights are no longer committed): v1 is issue #3's
# pixel-space model, v2 the 8x8-latent model v3 is fine-tuned from.
WEIGHTS = Path(__file__).resolve().parent / "weights" / "p2p_shapes_demo_v3.safetensors"
V1_WEIGHTS = WEIGHTS.with_name("p2p_shapes_demo.safetensors")
V2_WEIGHTS = WEIGHTS.with_name("p2p_shapes_demo_v2.safetensors")

UNET_CONFIG = {
    "use_checkpoint": False,
    "image_size": IMAGE_SIZE,
    "use_spatial_transformer": True,
    "legacy": False,
    "in_channels": 3,
    "out_channels": 3,
    "model_channels": 64,
    "channel_mult": [1, 1, 1],
    "num_res_blocks": [1, 1, 1],
    "transformer_depth": [0, 1, 1],  # attention at 16x16 and 8x8
    "transformer_depth_output": [0, 0, 1, 1, 1, 1],  # per output block, listed from the finest level up
    "transformer_depth_middle": 1,
    "use_linear_in_transformer": False,
    "context_dim": 64,
    "adm_in_channels": None,
    "use_temporal_resblock": False,
    "use_temporal_attention": False,
}
UNET_HEADS = 4

TEXT_CONFIG = {  # overrides of ComfyUI's sd1_clip_config.json
    "hidden_size": 64,
    "intermediate_size": 256,
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "projection_dim": 64,
}


def model_config(unet_config: dict = UNET_CONFIG, pixel_space: bool = True):
    """ComfyUI's model configuration of a demo UNet: v1's (pixels) by default, v2's with `model_v2.UNET_CONFIG`
    and pixel_space=False (latents of its autoencoder, trained to unit variance: no scaling)."""
    import comfy.latent_formats
    import comfy.supported_models

    config = comfy.supported_models.SD15(unet_config)
    config.unet_config["num_heads"] = UNET_HEADS
    # v1: 3 channels, identity scaling: pixels. v2: 4 channels, identity scaling, under a name of its own, which
    # inversions record (so one made with an SD1.5 checkpoint, also 4 channels, is refused by name). ComfyUI
    # declares `latent_format` as a class and replaces it with an instance in BASE.__init__, so an instance is
    # what belongs here; ty reads the class-level declaration.
    if pixel_space:
        latent_format = comfy.latent_formats.ChromaRadiance()
    else:
        latent_format = type("ShapesDemo", (comfy.latent_formats.LatentFormat,), {"scale_factor": 1.0})()
    config.latent_format = latent_format  # ty: ignore[invalid-assignment]
    # Zero terminal SNR: at 32x32 pixels the SD1 schedule's last step keeps the noise's mean colour in the
    # picture (a 32x32 image averages too few pixels to hide it); the rescaled schedule lets the model pick it.
    config.sampling_settings = {**config.sampling_settings, "zsnr": True}
    return config


def build_model(unet_state: dict | None = None, unet_config: dict = UNET_CONFIG, pixel_space: bool = True):
    """A ComfyUI MODEL (ModelPatcher); weights from `unet_state` (keys of the UNet) if given."""
    import comfy.model_base
    import comfy.model_management
    import comfy.model_patcher

    model = comfy.model_base.BaseModel(model_config(unet_config, pixel_space),
                                       model_type=comfy.model_base.ModelType.V_PREDICTION, device="cpu")
    if unet_state is not None:
        missing, unexpected = model.diffusion_model.load_state_dict(unet_state, strict=False)
        if missing or unexpected:
            raise ValueError(f"demo UNet weights do not fit: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return comfy.model_patcher.ModelPatcher(
        model, load_device=comfy.model_management.get_torch_device(),
        offload_device=comfy.model_management.unet_offload_device(),
    )


def build_clip(text_state: dict | None = None):
    """A ComfyUI CLIP: the real SD1 tokenizer and ComfyUI's SD1 text model at the demo's size."""
    import comfy.sd
    import comfy.sd1_clip
    import comfy.supported_models_base

    target = comfy.supported_models_base.ClipTarget(comfy.sd1_clip.SD1Tokenizer, comfy.sd1_clip.SD1ClipModel)
    clip = comfy.sd.CLIP(target, model_options={"clip_l_model_config": dict(TEXT_CONFIG), "dtype": torch.float32})
    if text_state is not None:
        missing, unexpected = clip.cond_stage_model.clip_l.transformer.load_state_dict(text_state, strict=False)
        if missing or unexpected:
            raise ValueError(f"demo text weights do not fit: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return clip


def token_ids(clip, text: str) -> list[int]:
    """The 77 ids ComfyUI's SD1 tokenizer gives `text`: the start token, the words, end tokens as padding."""
    return [t for t, _ in clip.tokenize(text)["l"][0]]


def word_token_count(clip, text: str) -> int:
    """How many tokens the words of `text` make (without the start and end tokens)."""
    return token_ids(clip, text).index(clip.tokenizer.clip_l.end_token) - 1


def build_vae(autoencoder_state: dict | None = None):
    """v1's pixel-space VAE, or v2's TAESD autoencoder from its state."""
    import comfy.sd

    return comfy.sd.VAE(sd=autoencoder_state or {"pixel_space_vae": torch.tensor(1.0)})


def split_state(state: dict, prefixes: tuple[str, ...] = ("unet", "text")) -> tuple[dict, ...]:
    """The parts of a weights file, by key prefix ("unet.", "text.", and "vae." for a latent model)."""
    return tuple({k[len(p) + 1:]: v for k, v in state.items() if k.startswith(p + ".")} for p in prefixes)


def load(path: Path = WEIGHTS):
    """(MODEL, CLIP, VAE) of a trained demo model: the pixel-space v1, or a latent model (v2, v3) when the file
    holds its autoencoder ("vae." keys); v2 and v3 share their layers and differ in the latent size the
    training wrote in the file's metadata."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    if not path.is_file():
        raise FileNotFoundError(f"demo weights not found at {path}; train them with `python -m shapes_demo.train`")
    unet, text, vae = split_state(load_file(str(path)), ("unet", "text", "vae"))
    if vae:
        from . import model_v2

        with safe_open(str(path), "pt") as f:
            version = (f.metadata() or {}).get("model", "v2")
        return model_v2.build_model(unet, model_v2.UNET_CONFIGS[version]), build_clip(text), build_vae(vae)
    return build_model(unet), build_clip(text), build_vae()
