"""Captured attention on the host: the P2P_ATTENTION value, and the heatmap grids and frontend payload drawn
from it."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..p2p import AttentionMaps, CaptureSpec, P2PError, self_components, word_maps
from ..p2p.text_inputs import parse_phrases
from .errors import input_error
from .heatmap_render import colorize, colour_map_rgb255, grid, overlay, upsample
from .tokenize import WordSplitter

__all__ = ["CapturedAttention", "DEFAULT_CAPTURE", "GRID_COLUMNS", "MAX_STEP_ROWS", "Drawing", "draw", "has_phrase",
           "segments_payload"]

log = logging.getLogger("prompt_to_prompt")

DEFAULT_CAPTURE = CaptureSpec()  # the paper's: 1/4-resolution layers of the down and up blocks, every step
MAX_STEP_ROWS = 6
# Heatmaps per row of the image grid: a longer row wraps, and per-step rows show the first this many words, so
# the grid of a 200-word prompt stays about as large as its heatmaps (the grid is as wide as its widest row).
GRID_COLUMNS = 16


@dataclass(frozen=True, eq=False)
class CapturedAttention:
    """The `attention` of a run: the maps (None when capture was off) and how to split words."""

    maps: AttentionMaps | None
    split_words: WordSplitter


@dataclass(frozen=True)
class Drawing:
    heatmaps: torch.Tensor  # [1, H, W, 3]: the labelled grid of one item
    components: torch.Tensor  # [1, H, W, 3]: its self-attention components
    payload: dict  # what the frontend's in-node view draws


def draw(node: str, attention: CapturedAttention | None, images: torch.Tensor, item: int, components: int,
         words: str) -> Drawing:
    """The heatmaps of one item of a captured run over its decoded `images` [B, H, W, 3]; errors name `node`."""
    if attention is None or attention.maps is None:
        raise input_error(node, "attention", "nothing was captured: P2P Attention Capture is disabled, or its "
                          "step range holds no step")
    maps = attention.maps
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
            if not any(has_phrase(maps, i, phrase) for i in range(count)):
                raise input_error(node, "words", f'"{" ".join(phrase)}" is in none of the prompts')
    pictures = images.float().cpu().numpy()  # [B, H, W, 3]
    heat = word_maps(maps, item, None if phrases is None else [p for p in phrases if has_phrase(maps, item, p)])
    if not heat:
        raise input_error(node, "words", f"none of them is in the prompt of item {item}")
    payload = _payload(maps, pictures, phrases, item)
    heat_grid = grid(_heatmap_rows(node, maps, pictures[item], item, heat))
    return Drawing(heat_grid, grid([_component_row(maps, pictures[item], item, components)]), payload)


def _payload(maps: AttentionMaps, pictures: np.ndarray, phrases, item: int) -> dict:
    items = []
    for i in range(len(maps.prompts)):
        chosen = None if phrases is None else [p for p in phrases if has_phrase(maps, i, p)]
        heat = word_maps(maps, i, chosen) if chosen != [] else []
        items.append({
            "label": "source" if i == 0 else f"edit {i}",
            "prompt": maps.prompts[i].text,
            "image": _save_preview(pictures[i]),
            "words": [label for label, _ in heat],
            "maps": [_normalised(m) for _, m in heat],
        })
    return _view_data(maps, items, item)


def segments_payload(maps: AttentionMaps, picture: np.ndarray, item: int,
                     segments: list[tuple[str, torch.Tensor]]) -> dict:
    """The heatmap view's data for one picture's segments: each segment is a chip ("1: circle") whose map is its
    mask ([h, w]), so clicking chips shows segments and shift-clicking unites them."""
    entry = {"label": "source" if item == 0 else f"edit {item}", "prompt": maps.prompts[item].text,
             "image": _save_preview(picture), "words": [label for label, _ in segments],
             "maps": [_normalised(mask.float()) for _, mask in segments]}
    return _view_data(maps, [entry], 0)


def _view_data(maps: AttentionMaps, items: list[dict], item: int) -> dict:
    return {
        "items": items,
        "item": item,
        "map_size": list(maps.spatial),
        "steps": [maps.steps[0] + 1, maps.steps[-1] + 1],
        "layers": maps.layer_count,
        "colour_map": colour_map_rgb255(),
    }


def _heatmap_rows(node: str, maps: AttentionMaps, picture: np.ndarray, item: int, heat) -> list:
    size = picture.shape[:2]
    tiles = [(label, overlay(picture, upsample(m, size))) for label, m in heat]
    mask = maps.blend_masks[item - 1] if item > 0 and len(maps.blend_masks) >= item else None
    if mask is not None:
        tiles.append(("blend mask", overlay(picture, upsample(mask.float(), size))))
    title = ("source" if item == 0 else f"edit {item}", picture)
    rows = [[title] + tiles[i : i + GRID_COLUMNS] for i in range(0, len(tiles), GRID_COLUMNS)]
    if maps.per_step is None:
        return rows
    stepped = heat[:GRID_COLUMNS]
    if len(heat) > len(stepped):
        log.warning("%s: the per-step rows show the first %d of %d words (%d left out); name the words to "
                    "show in the input 'words'", node, len(stepped), len(heat), len(heat) - len(stepped))
    picks = np.unique(np.linspace(0, len(maps.steps) - 1, min(MAX_STEP_ROWS, len(maps.steps))).round())
    for s in picks.astype(int):
        step_heat = word_maps(maps, item, [tuple(label.split(" ")) for label, _ in stepped], step=int(s))
        rows.append([(f"step {maps.steps[s] + 1}", picture)]
                    + [(label, overlay(picture, upsample(m, size))) for label, m in step_heat])
    return rows


def _component_row(maps: AttentionMaps, picture: np.ndarray, item: int, count: int) -> list:
    comps = self_components(maps, item, count)
    row = [("self-attention", picture)] if comps else [("no self-attention maps captured", picture)]
    return row + [(f"component {k + 1}", colorize(upsample(c, picture.shape[:2]))) for k, c in enumerate(comps)]


def _save_preview(picture: np.ndarray) -> dict:
    """Write a picture where the frontend can fetch it (ComfyUI's temp folder, emptied at start-up)."""
    import folder_paths

    folder = Path(folder_paths.get_temp_directory())
    folder.mkdir(parents=True, exist_ok=True)
    name = f"p2p_attention_{uuid.uuid4().hex[:12]}.png"
    pixels = (np.clip(picture, 0, 1) * 255).round().astype(np.uint8)
    Image.fromarray(pixels).save(folder / name, compress_level=1)
    return {"filename": name, "subfolder": "", "type": "temp"}


def has_phrase(maps: AttentionMaps, item: int, phrase: tuple[str, ...]) -> bool:
    try:
        maps.prompts[item].find(phrase)
        return True
    except P2PError:
        return False


def _normalised(heat: torch.Tensor) -> dict:
    """A map for the frontend: rows of values 0..1 (scaled to the map's maximum), 3 decimals."""
    scaled = heat.float() / heat.float().max().clamp_min(1e-12)
    return {"h": scaled.shape[0], "w": scaled.shape[1], "values": [round(v, 3) for v in scaled.flatten().tolist()]}
