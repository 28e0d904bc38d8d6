"""Demo models v2 and v3 (issue #21; v3 is the committed model): latent models with attention at every
resolution. v3 is v2's UNet fine-tuned to the 16x16 latents of 128x128 pictures; v2 works on 8x8 latents.

* VAE: ComfyUI's TAESD architecture trained on the world (`shapes_demo.autoencoder`): 64x64 pictures,
  8x8x4 latents whose channel 0 carries object coverage for every colour alike.
* UNet: ComfyUI's `openaimodel.UNetModel` through the SD1.5 configuration, 4 latent channels, spatial
  transformers at 8x8 (the full latent resolution, as SD has), 4x4 and 2x2 and in the middle block.
* Text encoder: as v1 (ComfyUI's SD1 CLIP text model at width 64, the real SD1 tokenizer).
"""

from __future__ import annotations

from . import model as demo
from .autoencoder import LATENT_CHANNELS, V2, V3

__all__ = ["UNET_CONFIG", "UNET_CONFIGS", "model_config", "build_model"]

UNET_CONFIG = {  # v1's, with these differences
    **demo.UNET_CONFIG,
    "image_size": V2.latent_size,
    "in_channels": LATENT_CHANNELS,
    "out_channels": LATENT_CHANNELS,
    "num_res_blocks": [2, 2, 2],
    "transformer_depth": [1, 1, 1, 1, 1, 1],  # per input res-block: attention at 8x8, 4x4 and 2x2
    "transformer_depth_output": [1] * 9,  # per output block, from the finest level up
}
# v3: the same layers (the same weights fit), attending at 16x16, 8x8 and 4x4
UNET_CONFIGS = {"v2": UNET_CONFIG, "v3": {**UNET_CONFIG, "image_size": V3.latent_size}}


def model_config(unet_config: dict = UNET_CONFIG):
    return demo.model_config(unet_config, pixel_space=False)


def build_model(unet_state: dict | None = None, unet_config: dict = UNET_CONFIG):
    """v2's (or v3's) UNet as a ComfyUI MODEL (ModelPatcher); weights from `unet_state` if given."""
    return demo.build_model(unet_state, unet_config, pixel_space=False)
