"""Attention heatmaps: what P2PSampler captures, and P2PAttentionCapture / P2PAttentionMaps."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..p2p import LAYER_GROUPS, AttentionMaps, CaptureSpec, P2PError, Window, self_components, word_maps
from ..p2p.text_inputs import parse_phrases
from .errors import input_error, node_input
from .heatmap_render import colorize, colour_map_rgb255, grid, overlay, upsample
from .tokenize import WordSplitter

__all__ = ["P2P_CAPTURE", "P2P_ATTENTION", "CapturedAttention", "P2PAttentionCapture", "P2PAttentionMaps",
           "DEFAULT_CAPTURE"]

log = logging.getLogger("prompt_to_prompt")

P2P_CAPTURE = "P2P_CAPTURE"
P2P_ATTENTION = "P2P_ATTENTION"
DEFAULT_CAPTURE = CaptureSpec()  # the paper's: 1/4-resolution layers of the down and up blocks, every step
RESOLUTIONS = {"auto": None, "1/1": 1, "1/2": 2, "1/4": 4, "1/8": 8}
MAX_STEP_ROWS = 6
# Heatmaps per row of the image grid: a longer row wraps, and per-step rows show the first this many words, so
# the grid of a 200-word prompt stays about as large as its heatmaps (the grid is as wide as its widest row).
GRID_COLUMNS = 16


@dataclass(frozen=True, eq=False)
class CapturedAttention:
    """P2PSampler's `attention` output: the maps (None when capture was off) and how to split words."""

    maps: AttentionMaps | None
    split_words: WordSplitter


class P2PAttentionCapture:
    DESCRIPTION = (
        "Chooses which attention maps P2P Sampler captures for its `attention` output. Without this node the "
        "sampler captures the paper's choice: the layers at 1/4 of the latent size (16x16 for SD1.5 at 512 px), "
        "down and up blocks, all steps."
    )
    CATEGORY = "prompt_to_prompt"
    RETURN_TYPES = (P2P_CAPTURE,)
    RETURN_NAMES = ("capture",)
    OUTPUT_TOOLTIPS = ("Connect to P2P Sampler's `capture` input.",)
    FUNCTION = "configure"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "enabled": ("BOOLEAN", {"default": True, "tooltip":
                    "Off: nothing is captured and capturing costs nothing; the `attention` output is then empty."}),
                "resolution": (list(RESOLUTIONS), {"default": "auto", "tooltip":
                    "Layers whose maps are captured, by size relative to the latent. auto: 1/4 (the paper's 16x16 "
                    "maps at 512 px); finer maps are sharper but noisier."}),
                "start": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip":
                    "First step averaged, as a fraction of the steps."}),
                "end": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip":
                    "Steps before this fraction are averaged (1 = through the last step)."}),
                "layers": (list(LAYER_GROUPS), {"default": "down+up", "tooltip":
                    "UNet blocks averaged: down (encoder), middle, up (decoder); the paper uses down+up."}),
                "per_step": ("BOOLEAN", {"default": False, "tooltip":
                    "Also keep one map per step (P2P Attention Maps then adds rows for a few steps, showing at most "
                    f"{GRID_COLUMNS} words). Uses memory in proportion to the steps."}),
                "self_attention": ("BOOLEAN", {"default": True, "tooltip":
                    "Also average the self-attention maps, for the principal-components view (kept only for "
                    "layers of at most 32x32)."}),
            }
        }

    def configure(self, enabled, resolution, start, end, layers, per_step, self_attention):
        node = "P2PAttentionCapture"
        if not enabled:
            return (None,)
        if end <= start:
            raise input_error(node, "end", f"must be after start ({start}), got {end}")
        with node_input(node, "start"):
            window = Window(start, end)
        return (CaptureSpec(RESOLUTIONS[resolution], window, layers, per_step, self_attention),)


def _save_preview(picture: np.ndarray) -> dict:
    """Write a picture where the frontend can fetch it (ComfyUI's temp folder, emptied at start-up)."""
    import folder_paths

    folder = Path(folder_paths.get_temp_directory())
    folder.mkdir(parents=True, exist_ok=True)
    name = f"p2p_attention_{uuid.uuid4().hex[:12]}.png"
    pixels = (np.clip(picture, 0, 1) * 255).round().astype(np.uint8)
    Image.fromarray(pixels).save(folder / name, compress_level=1)
    return {"filename": name, "subfolder": "", "type": "temp"}


class P2PAttentionMaps:
    DESCRIPTION = (
        "Shows where each word of a prompt attended during sampling: one heatmap per word over the picture "
        "(as in the paper), drawn inside this node where you can pick words, the item and the opacity, and as an "
        "image grid. Also the top principal components of the self-attention maps."
    )
    CATEGORY = "prompt_to_prompt"
    RETURN_TYPES = ("IMAGE", "IMAGE")
    RETURN_NAMES = ("heatmaps", "components")
    OUTPUT_TOOLTIPS = (
        "A labelled grid: the picture, then each word's heatmap over it (plus the local-blend mask of a blended edit).",
        "The picture and the top principal components of its self-attention maps (the layout the model holds).",
    )
    OUTPUT_NODE = True
    FUNCTION = "draw"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "attention": (P2P_ATTENTION, {"tooltip": "P2P Sampler's `attention` output."}),
                "images": ("IMAGE", {"tooltip": "The decoded batch of that sampler: source first, then each edit."}),
                "item": ("INT", {"default": 0, "min": 0, "max": 64, "tooltip":
                    "Which picture the image outputs show: 0 = the source, k = edit k. The view inside the node "
                    "can switch between all of them."}),
                "components": ("INT", {"default": 6, "min": 1, "max": 16, "tooltip":
                    "How many self-attention principal components to show."}),
            },
            "optional": {
                "words": ("STRING", {"default": "", "tooltip":
                    "Words or phrases to show, comma-separated (for example \"cat, red hat\"); a phrase's tokens are "
                    "summed. Empty: every word of each prompt."}),
            },
        }

    def draw(self, attention: CapturedAttention, images: torch.Tensor, item: int, components: int, words: str = ""):
        node = "P2PAttentionMaps"
        maps = attention.maps if attention is not None else None
        if maps is None:
            raise input_error(node, "attention", "nothing was captured: P2P Attention Capture is disabled, or its "
                              "step range holds no step")
        count = len(maps.prompts)
        if images.shape[0] != count:
            raise input_error(node, "images", f"got {images.shape[0]} pictures but the sampler made {count} "
                              "(the source and each edit): connect the VAE Decode of that sampler's latent")
        if item >= count:
            raise input_error(node, "item", f"is {item}, but there are only the source (0) and {count - 1} edit(s)")
        phrases = None
        if words.strip():
            phrases = [attention.split_words(p) for p in parse_phrases(words)]
            for phrase in phrases:
                if not any(_has(maps, i, phrase) for i in range(count)):
                    raise input_error(node, "words", f'"{" ".join(phrase)}" is in none of the prompts')

        pictures = images.float().cpu().numpy()  # [B, H, W, 3]
        size = pictures.shape[1:3]
        payload_items = []
        for i in range(count):
            chosen = None if phrases is None else [p for p in phrases if _has(maps, i, p)]
            heat = word_maps(maps, i, chosen) if chosen != [] else []
            payload_items.append({
                "label": "source" if i == 0 else f"edit {i}",
                "prompt": maps.prompts[i].text,
                "image": _save_preview(pictures[i]),
                "words": [label for label, _ in heat],
                "maps": [_normalised(m) for _, m in heat],
            })

        heat = word_maps(maps, item, None if phrases is None else [p for p in phrases if _has(maps, item, p)])
        if not heat:
            raise input_error(node, "words", f"none of them is in the prompt of item {item}")
        picture = pictures[item]
        tiles = [(label, overlay(picture, upsample(m, size))) for label, m in heat]
        mask = maps.blend_masks[item - 1] if item > 0 and len(maps.blend_masks) >= item else None
        if mask is not None:
            tiles.append(("blend mask", overlay(picture, upsample(mask.float(), size))))
        title = ("source" if item == 0 else f"edit {item}", picture)
        rows = [[title] + tiles[i : i + GRID_COLUMNS] for i in range(0, len(tiles), GRID_COLUMNS)]
        if maps.per_step is not None:
            stepped = heat[:GRID_COLUMNS]
            if len(heat) > len(stepped):
                log.warning("%s: the per-step rows show the first %d of %d words (%d left out); name the words to "
                            "show in the input 'words'", node, len(stepped), len(heat), len(heat) - len(stepped))
            picks = np.unique(np.linspace(0, len(maps.steps) - 1, min(MAX_STEP_ROWS, len(maps.steps))).round())
            for s in picks.astype(int):
                step_heat = word_maps(maps, item, [tuple(label.split(" ")) for label, _ in stepped], step=int(s))
                rows.append([(f"step {maps.steps[s] + 1}", picture)]
                            + [(label, overlay(picture, upsample(m, size))) for label, m in step_heat])

        comps = self_components(maps, item, components)
        comp_row = [("self-attention", picture)] if comps else [("no self-attention maps captured", picture)]
        comp_row += [(f"component {k + 1}", colorize(upsample(c, size))) for k, c in enumerate(comps)]

        ui = {"p2p_attention": [{
            "items": payload_items,
            "item": item,
            "map_size": list(maps.spatial),
            "steps": [maps.steps[0] + 1, maps.steps[-1] + 1],
            "layers": maps.layer_count,
            "colour_map": colour_map_rgb255(),
        }]}
        return {"ui": ui, "result": (grid(rows), grid([comp_row]))}


def _has(maps: AttentionMaps, item: int, phrase: tuple[str, ...]) -> bool:
    try:
        maps.prompts[item].find(phrase)
        return True
    except P2PError:
        return False


def _normalised(heat: torch.Tensor) -> dict:
    """A map for the frontend: rows of values 0..1 (scaled to the map's maximum), 3 decimals."""
    scaled = heat.float() / heat.float().max().clamp_min(1e-12)
    return {"h": scaled.shape[0], "w": scaled.shape[1], "values": [round(v, 3) for v in scaled.flatten().tolist()]}

