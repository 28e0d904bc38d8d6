"""Drawing attention maps: colour maps, overlays and labelled grids (numpy and PIL, host-free)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

__all__ = ["colorize", "colour_map_rgb255", "overlay", "grid", "upsample"]

# Anchors of a perceptual dark-to-bright colour map (inferno-like): value 0..1 -> RGB 0..1.
_ANCHORS = np.array([
    [0.00, 0.00, 0.00, 0.02],
    [0.25, 0.34, 0.06, 0.43],
    [0.50, 0.73, 0.21, 0.33],
    [0.75, 0.98, 0.55, 0.04],
    [1.00, 0.99, 1.00, 0.64],
])
LABEL_HEIGHT = 18
MIN_TILE = 192  # pixels: small pictures are scaled up (nearest) so labels and maps stay readable


def colour_map_rgb255() -> list[list[float]]:
    """The colour map's anchors as [value, r, g, b] with channels in 0..255: what the frontend's heatmap view
    draws with, sent with the maps so that the node's image and the view share this one definition."""
    return [[float(a[0]), *(round(float(c) * 255) for c in a[1:])] for a in _ANCHORS]


def colorize(values: np.ndarray) -> np.ndarray:
    """[h, w] in 0..1 -> [h, w, 3] RGB in 0..1."""
    v = np.clip(values, 0.0, 1.0)
    return np.stack([np.interp(v, _ANCHORS[:, 0], _ANCHORS[:, c]) for c in (1, 2, 3)], axis=-1)


def upsample(heat: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """[h, w] map -> [H, W] bilinear, scaled to its own maximum (as the paper shows them)."""
    heat = heat.float()
    heat = heat / heat.max().clamp_min(1e-12)
    big = torch.nn.functional.interpolate(heat[None, None], size=size, mode="bilinear", align_corners=False)
    return big[0, 0].clamp(0, 1).numpy()


def overlay(image: np.ndarray, heat: np.ndarray, opacity: float = 0.7) -> np.ndarray:
    """image [H, W, 3] and heat [H, W] in 0..1 -> the heat map over the picture; weakly attended pixels stay
    transparent, so the picture shows through where the word is not (as the node's view draws it)."""
    alpha = (opacity * np.minimum(1.0, 1.5 * heat))[..., None]
    return (1 - alpha) * image + alpha * colorize(heat)


def _tile(image: np.ndarray, label: str, scale: int) -> Image.Image:
    pixels = (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
    picture = Image.fromarray(pixels).resize((image.shape[1] * scale, image.shape[0] * scale), Image.Resampling.NEAREST)
    tile = Image.new("RGB", (picture.width, picture.height + LABEL_HEIGHT), (24, 24, 24))
    tile.paste(picture, (0, 0))
    draw = ImageDraw.Draw(tile)
    font = ImageFont.load_default()
    fits = draw.textlength(label, font=font) <= picture.width - 4
    text = label if fits else label[: max(1, picture.width // 7)] + "…"
    draw.text((picture.width / 2, picture.height + LABEL_HEIGHT / 2), text, fill=(235, 235, 235), font=font,
              anchor="mm")
    return tile


def grid(rows: list[list[tuple[str, np.ndarray]]]) -> torch.Tensor:
    """Rows of (label, [H, W, 3] picture in 0..1) -> one labelled grid as a ComfyUI IMAGE [1, H', W', 3]."""
    height, width = rows[0][0][1].shape[:2]
    scale = max(1, -(-MIN_TILE // max(height, width)))
    tiles = [[_tile(img, label, scale) for label, img in row] for row in rows]
    tile_w, tile_h = tiles[0][0].size
    columns = max(len(r) for r in tiles)
    sheet = Image.new("RGB", (columns * tile_w + (columns - 1) * 4, len(tiles) * tile_h + (len(tiles) - 1) * 4),
                      (12, 12, 12))
    for r, row in enumerate(tiles):
        for c, tile in enumerate(row):
            sheet.paste(tile, (c * (tile_w + 4), r * (tile_h + 4)))
    return torch.from_numpy(np.asarray(sheet, dtype=np.float32) / 255.0)[None]
