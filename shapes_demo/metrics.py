"""Measuring generated shapes pictures: which pixels have which colour, and how two pictures compare.

Images are [H, W, 3] float arrays in 0..1. A pixel is assigned the nearest colour of the world's palette
(object colours, their stripe shades, backgrounds); that is exact for rendered scenes and robust for
generated ones, whose colours are close to the palette's.
"""

from __future__ import annotations

import math

import numpy as np

from .world import BACKGROUNDS, COLORS, SIZE, STRIPE_SHADE

__all__ = ["to_world_pixels", "classify", "color_mask", "object_mask", "background_of", "iou", "psnr", "centroid",
           "area", "spearman", "dilate", "PALETTE"]

# name of the class, RGB; stripe shades count as their colour
PALETTE = [(name, np.array(rgb)) for name, rgb in COLORS.items()]
PALETTE += [(name, np.array(rgb) * STRIPE_SHADE) for name, rgb in COLORS.items()]
PALETTE += [(f"background:{name}", np.array(rgb)) for name, rgb in BACKGROUNDS.items()]
_NAMES = [n for n, _ in PALETTE]
_RGB = np.stack([c for _, c in PALETTE])  # [K, 3]


def to_world_pixels(images: np.ndarray) -> np.ndarray:
    """[B, S, S, 3] pictures at any multiple of the world's resolution, averaged down to [B, 32, 32, 3], so
    that every figure is measured in the same pixels whatever the model's resolution."""
    b, h, w, c = images.shape
    pool = h // SIZE
    return images.reshape(b, h // pool, pool, w // pool, pool, c).mean(axis=(2, 4))


def classify(image: np.ndarray) -> np.ndarray:
    """[H, W] array of palette names."""
    distance = ((image[..., None, :] - _RGB) ** 2).sum(-1)  # [H, W, K]
    return np.array(_NAMES, dtype=object)[distance.argmin(-1)]


def color_mask(image: np.ndarray, color: str) -> np.ndarray:
    """Pixels whose nearest palette colour is `color` (or its stripe shade)."""
    return classify(image) == color


def background_of(image: np.ndarray) -> str:
    """The background colour most of the image's background-classified pixels have."""
    classes = classify(image)
    names, counts = np.unique([c for c in classes.ravel() if c.startswith("background:")], return_counts=True)
    return names[counts.argmax()].split(":", 1)[1] if len(names) else "gray"


def object_mask(image: np.ndarray, color: str) -> np.ndarray:
    """Pixels of an object of `color`. Pixels on the line between the colour and the image's background
    (flat fills and their anti-aliased edges) count when at least half-way to the colour; others (stripes,
    off-palette pixels) by their nearest palette colour. Nearest-colour alone misreads edges: a red/white
    edge pixel is nearer orange than either."""
    c, bg = np.array(COLORS[color]), np.array(BACKGROUNDS[background_of(image)])
    v = c - bg
    t = ((image - bg) @ v) / (v @ v)  # 0 at the background, 1 at the colour
    off_line = np.linalg.norm(image - bg - t[..., None] * v, axis=-1)
    on_line = off_line < 0.15
    return np.where(on_line, t >= 0.5, classify(image) == color)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Peak signal-to-noise ratio in dB over the masked pixels (inf where identical)."""
    diff = (a - b) if mask is None else (a - b)[mask]
    mse = float((diff ** 2).mean()) if diff.size else 0.0
    return math.inf if mse == 0.0 else 10.0 * math.log10(1.0 / mse)


def area(mask: np.ndarray) -> int:
    return int(mask.sum())


def centroid(mask: np.ndarray) -> tuple[float, float] | None:
    ys, xs = np.nonzero(mask)
    return (float(xs.mean()), float(ys.mean())) if len(xs) else None


def dilate(mask: np.ndarray, radius: int = 1) -> np.ndarray:
    """Grow a mask by `radius` pixels (square neighbourhood, no wrap-around)."""
    h, w = mask.shape
    padded = np.pad(mask, radius)
    out = np.zeros_like(mask)
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            out |= padded[dy : dy + h, dx : dx + w]
    return out


def _ranks(values: np.ndarray) -> np.ndarray:
    order = values.argsort(kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values))
    for v in np.unique(values):  # ties share their mean rank
        tied = values == v
        ranks[tied] = ranks[tied].mean()
    return ranks


def spearman(x, y) -> float:
    """Spearman's rank correlation (nan when either side is constant)."""
    rx, ry = _ranks(np.asarray(x, float)), _ranks(np.asarray(y, float))
    if rx.std() == 0 or ry.std() == 0:
        return math.nan
    return float(np.corrcoef(rx, ry)[0, 1])
