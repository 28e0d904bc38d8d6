"""P2P Attention Segments on the host: checks the captured attention, segments one item, and draws the result as
an IMAGE grid, a MASK per word at the latent's size and a text of the labels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..p2p.capture import SELF_MAX_TOKENS
from ..p2p.segments import Segmentation, segment, word_masks
from ..p2p.text_inputs import parse_phrases
from .attention_view import CapturedAttention, has_phrase, segments_payload
from .errors import input_error, node_input
from .heatmap_render import grid

__all__ = ["NODE", "SegmentsView", "segments_view", "SEGMENT_COLOURS"]

NODE = "P2PAttentionSegments"
SEGMENT_COLOURS = np.array([  # distinct colours, one per segment (background segments are drawn grey)
    (0.90, 0.30, 0.25), (0.25, 0.55, 0.90), (0.35, 0.75, 0.30), (0.95, 0.75, 0.20), (0.65, 0.35, 0.80),
    (0.20, 0.75, 0.75), (0.95, 0.50, 0.70), (0.60, 0.45, 0.25), (0.70, 0.85, 0.35), (0.30, 0.30, 0.60),
    (0.85, 0.55, 0.30), (0.45, 0.65, 0.55), (0.80, 0.80, 0.80), (0.55, 0.20, 0.35), (0.20, 0.45, 0.30),
    (0.95, 0.90, 0.55),
])
BACKGROUND_GREY = 0.35


@dataclass(frozen=True)
class SegmentsView:
    image: torch.Tensor  # [1, H, W, 3]: picture | segments | one tile per segment
    masks: torch.Tensor  # [n_words, H_lat, W_lat] float 0/1
    mask: torch.Tensor  # [1, H_lat, W_lat]: the words' union
    labels: str  # "1: circle, 2: background, ..."
    payload: dict | None  # the heatmap view's data (each segment a chip), when the pictures are given


def segments_view(attention: CapturedAttention | None, images: torch.Tensor | None, item: int, count: int,
                  words: str, threshold: float) -> SegmentsView:
    if attention is None or attention.maps is None:
        raise input_error(NODE, "attention", "nothing was captured: P2P Attention Capture is disabled, or its "
                          "step range holds no step")
    maps = attention.maps
    if maps.self_maps is None:
        raise input_error(NODE, "attention", f"holds no self-attention maps: connect a P2P Attention Capture with "
                          f"self_attention on, at a resolution whose maps have at most {SELF_MAX_TOKENS} cells "
                          "(1/2 or 1/4 on SD1.5 at 512 px, 1/4 on SDXL at 1024 px)")
    items = len(maps.prompts)
    if item >= items:
        raise input_error(NODE, "item", f"is {item}, but there are only the source (0) and {items - 1} edit(s)")
    if images is not None and images.shape[0] != items:
        raise input_error(NODE, "images", f"got {images.shape[0]} pictures but the sampler made {items}: connect "
                          "the VAE Decode of that sampler's latent")
    phrases = None
    if words.strip():
        phrases = [attention.split_words(p) for p in parse_phrases(words)]
        missing = [" ".join(p) for p in phrases if not has_phrase(maps, item, p)]
        if missing:
            raise input_error(NODE, "words", f'{", ".join(missing)} not in the prompt of item {item}: '
                              f'"{maps.prompts[item].text}"')
    with node_input(NODE, "segments"):
        seg = segment(maps, item, k=count, phrases=phrases, threshold=threshold)
    size = maps.latent_size or maps.spatial
    masks = word_masks(seg, size)
    union = masks.amax(dim=0, keepdim=True) if len(masks) else torch.zeros(1, *size)
    picture = None if images is None else images[item].float().cpu().numpy()
    payload = None
    if picture is not None:
        chips = [(label, seg.labels == i) for i, label in enumerate(_segment_labels(seg))]
        payload = segments_payload(maps, picture, item, chips)
    return SegmentsView(_draw(seg, picture), masks, union, _labels(seg), payload)


def _segment_labels(seg: Segmentation) -> list[str]:
    return [f"{i + 1}: {name or 'background'}" for i, name in enumerate(seg.names)]


def _labels(seg: Segmentation) -> str:
    return ", ".join(_segment_labels(seg))


def _colours(seg: Segmentation) -> np.ndarray:
    """[h, w, 3]: each cell in its segment's colour (background segments grey)."""
    labels = seg.labels.numpy()
    palette = SEGMENT_COLOURS[np.arange(len(seg.names)) % len(SEGMENT_COLOURS)].copy()
    palette[[i for i, n in enumerate(seg.names) if not n]] = BACKGROUND_GREY
    return palette[labels]


def _scaled(cells: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """[h, w, 3] cells -> [H, W, 3] by nearest neighbour (segments are per cell)."""
    t = torch.from_numpy(cells).permute(2, 0, 1)[None].float()
    return F.interpolate(t, size=size, mode="nearest")[0].permute(1, 2, 0).numpy()


def _draw(seg: Segmentation, picture: np.ndarray | None) -> torch.Tensor:
    h, w = seg.labels.shape
    size = picture.shape[:2] if picture is not None else (h * 8, w * 8)
    coloured = _scaled(_colours(seg), size)
    row = [] if picture is None else [("picture", picture)]
    row.append(("segments", coloured if picture is None else 0.5 * picture + 0.5 * coloured))
    base = picture if picture is not None else np.full((*size, 3), 0.15)
    for i, label in enumerate(_segment_labels(seg)):
        inside = _scaled((seg.labels.numpy() == i)[..., None].repeat(3, -1).astype(np.float32), size)
        row.append((label, base * (0.25 + 0.75 * inside)))
    return grid([row])

