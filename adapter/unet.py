"""Where a UNet's attention layers are, enumerated from the model itself (no tables)."""

from __future__ import annotations

from dataclasses import dataclass

from comfy.ldm.modules.attention import SpatialTransformer
from comfy.ldm.modules.diffusionmodules.openaimodel import Downsample, UNetModel, Upsample

__all__ = ["AttentionSite", "attention_sites", "UnsupportedModel", "model_family", "map_downsample",
           "MIN_MAP_SIDE"]


class UnsupportedModel(ValueError):
    pass


@dataclass(frozen=True)
class AttentionSite:
    key: tuple[str, int, int]  # ComfyUI's replace-patch key: (block, block id, index in the block)
    downsample: int  # latent size / this layer's size


def attention_sites(model_patcher) -> list[AttentionSite]:
    """Every transformer block with text cross-attention, with its resolution class.

    Raises UnsupportedModel for models that are not UNets with cross-attention (Flux, SD3, ...).
    """
    dm = model_patcher.get_model_object("diffusion_model")
    if not isinstance(dm, UNetModel):
        raise UnsupportedModel(
            f"{model_family(model_patcher)} models ({type(dm).__name__}) are not supported yet: Prompt-to-Prompt "
            "here needs a UNet with text cross-attention (SD1.x, SD2.x, SDXL and their fine-tunes)"
        )
    sites: list[AttentionSite] = []
    factor = 1

    def visit(block_name: str, block_id: int, block) -> None:
        for layer in block.children():
            if isinstance(layer, SpatialTransformer):
                for index, tb in enumerate(layer.transformer_blocks):
                    if getattr(tb, "attn2", None) is not None:
                        sites.append(AttentionSite((block_name, block_id, index), factor))

    for block_id, block in enumerate(dm.input_blocks):
        visit("input", block_id, block)
        if any(isinstance(layer, Downsample) for layer in block.children()):
            factor *= 2
    visit("middle", 0, dm.middle_block)
    for block_id, block in enumerate(dm.output_blocks):
        visit("output", block_id, block)
        if any(isinstance(layer, Upsample) for layer in block.children()):
            factor //= 2
    if not sites:
        raise UnsupportedModel("this UNet has no text cross-attention layers, so there is nothing to edit")
    return sites


def model_family(model_patcher) -> str:
    """The model's family as ComfyUI names its configuration ("SD3", "Flux", "WAN21_T2V", ...)."""
    config = getattr(model_patcher.model, "model_config", None)
    return type(config).__name__ if config is not None else type(model_patcher.model).__name__


# The paper's 16x16 maps at least, for the default capture and local blend alike. Coarser maps do not find
# the objects on demo model v3's 16x16 latent: its 8x8 maps gave self-attention segments of IoU 0.08 against 0.65
# from 16x16, and a blend mask (dilated by one map cell) that covered the untouched object (26 dB kept
# against 44).
MIN_MAP_SIDE = 16
WANTED_DOWNSAMPLE = 4  # 1/4 of the latent: the paper's 16x16 maps on SD1.5's 64x64 latent at 512 px


def map_downsample(sites: list[AttentionSite], latent_side: int) -> int:
    """The resolution class the default capture and local blend read: the one closest to WANTED_DOWNSAMPLE among
    those whose maps have at least MIN_MAP_SIDE cells a side on a latent of `latent_side` (the shorter side), or
    the finest there is."""
    factors = sorted({s.downsample for s in sites})
    fine_enough = [f for f in factors if latent_side // f >= MIN_MAP_SIDE] or factors[:1]
    return min(fine_enough, key=lambda f: (abs(f - WANTED_DOWNSAMPLE), f))
