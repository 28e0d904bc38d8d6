"""Self-attention segmentation, labelled by cross-attention (as in Patashnik et al., "Localizing Object-level Shape
Variations with Text-to-Image Diffusion Models", ICCV 2023).

Each map cell's self-attention row says which cells it attends to; cells of one object attend alike, so k-means
on the rows (averaged over heads, layers and steps) splits the picture into segments. A segment is labelled with
the word whose cross-attention map, normalised to 0..1, has the highest mean over it, when that mean is above a
threshold; otherwise it is background.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .capture import AttentionMaps, word_maps
from .errors import P2PError

__all__ = ["SEGMENTS", "LABEL_THRESHOLD", "kmeans", "Segmentation", "segment", "word_masks"]

SEGMENTS = 5  # the paper's number of segments
LABEL_THRESHOLD = 0.3  # the paper's background threshold on a word's normalised map


def kmeans(x: torch.Tensor, k: int, seed: int = 0, n_init: int = 10, max_iter: int = 300,
           tol: float = 1e-4) -> torch.Tensor:
    """x [N, D] -> labels [N] (int64): Lloyd's algorithm from k-means++ starts, the best of `n_init` by inertia
    (scikit-learn's defaults, which the paper calls). Deterministic for a seed; labels numbered in the order of
    each cluster's first row."""
    x = x.double()
    n = x.shape[0]
    if not 1 <= k <= n:
        raise P2PError(f"cannot make {k} segments of {n} cells")
    gen = torch.Generator().manual_seed(seed)
    best, best_inertia = None, float("inf")
    for _ in range(n_init):
        centres = x[torch.randint(n, (1,), generator=gen)]
        for _ in range(1, k):  # k-means++: the next centre drawn in proportion to the squared distance
            d2 = torch.cdist(x, centres).pow(2).min(dim=1).values
            total = float(d2.sum())
            pick = torch.multinomial(d2 / total, 1, generator=gen) if total > 0 else torch.randint(n, (1,),
                                                                                                    generator=gen)
            centres = torch.cat([centres, x[pick]])
        for _ in range(max_iter):
            labels = torch.cdist(x, centres).argmin(dim=1)
            moved = torch.stack([x[labels == c].mean(0) if (labels == c).any() else centres[c] for c in range(k)])
            shift = float((moved - centres).pow(2).sum())
            centres = moved
            if shift <= tol * float(x.var(dim=0).mean()) * k:
                break
        labels = torch.cdist(x, centres).argmin(dim=1)
        inertia = float((x - centres[labels]).pow(2).sum())
        if inertia < best_inertia - 1e-12:
            best, best_inertia = labels, inertia
    assert best is not None
    order = {int(c): i for i, c in enumerate(dict.fromkeys(best.tolist()))}  # first-seen order
    return torch.tensor([order[int(c)] for c in best])


@dataclass(frozen=True, eq=False)
class Segmentation:
    labels: torch.Tensor  # [h, w] int64: the segment of each map cell, numbered in raster order of first cells
    names: tuple[str, ...]  # per segment: the word it is labelled with, "" for background
    scores: torch.Tensor  # [k, n_words]: each word's mean normalised map over each segment
    words: tuple[str, ...]

    def word_mask(self, word: str) -> torch.Tensor:
        """[h, w] bool: the cells of the segments labelled `word`."""
        chosen = [i for i, name in enumerate(self.names) if name == word]
        return torch.isin(self.labels, torch.tensor(chosen, dtype=self.labels.dtype))


def segment(maps: AttentionMaps, item: int, k: int = SEGMENTS, phrases: list[tuple[str, ...]] | None = None,
            threshold: float = LABEL_THRESHOLD, seed: int = 0) -> Segmentation:
    """Segments of an item's captured self-attention, labelled by the phrases' cross-attention (default: every
    word of its prompt)."""
    if maps.self_maps is None:
        raise P2PError("holds no self-attention maps")
    if not 0 <= item < len(maps.self_maps):
        raise P2PError(f"is {item}, but the run has {len(maps.self_maps)} items (0 is the source)")
    h, w = maps.spatial
    if k > h * w:
        raise P2PError(f"is {k}, more than the {h}x{w} = {h * w} cells of the maps")
    rows = maps.self_maps[item].double()  # [N, N]: each query cell's attention over the key cells
    labels = kmeans(rows, k, seed=seed).reshape(h, w)
    named = word_maps(maps, item, phrases)
    words = tuple(label for label, _ in named)
    if named:
        stacked = torch.stack([m.double() for _, m in named])  # [n_words, h, w]
        low = stacked.flatten(1).amin(1)[:, None, None]
        high = stacked.flatten(1).amax(1)[:, None, None]
        normalised = (stacked - low) / (high - low).clamp_min(1e-12)
        scores = torch.stack([normalised[:, labels == c].mean(1) for c in range(k)])  # [k, n_words]
        best = scores.max(dim=1)
        names = tuple(words[int(i)] if float(v) > threshold else "" for v, i in zip(best.values, best.indices,
                                                                                      strict=True))
    else:
        scores = torch.zeros(k, 0, dtype=torch.float64)
        names = ("",) * k
    return Segmentation(labels=labels, names=names, scores=scores.float(), words=words)


def word_masks(seg: Segmentation, size: tuple[int, int]) -> torch.Tensor:
    """[n_words, H, W] float 0/1: each word's segments, scaled to `size` (the latent's) by nearest neighbour."""
    if not seg.words:
        return torch.zeros(0, *size)
    masks = torch.stack([seg.word_mask(word) for word in seg.words]).float()  # [n, h, w]
    return F.interpolate(masks[None], size=size, mode="nearest")[0]
