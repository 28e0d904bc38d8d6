"""Local blending: keep the source image outside the region the edited words attend to.

During the run the attention of the blend words is summed over steps, heads and the blend layers
(`BlendMaps`). From a chosen step on, the edited item is reset to the source outside the mask made
from those sums (`blend_mask`, `blend`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .errors import P2PError
from .spec import REGION_THRESHOLD, LocalBlend

__all__ = ["BlendMaps", "blend_mask", "region_mask", "blend"]

SOURCE, TARGET, SUBTRACT_SOURCE, SUBTRACT_TARGET = "source", "target", "subtract_source", "subtract_target"


class BlendMaps:
    """Running sums of word attention maps [h, w] for one edit."""

    def __init__(self, spec: LocalBlend):
        self.spec = spec
        self.sums: dict[str, torch.Tensor] = {}
        self.region_cells: dict[tuple, torch.Tensor] = {}  # (size, device) -> the given region at that size

    def positions(self) -> dict[str, tuple[int, ...]]:
        s = self.spec
        candidates = {
            SOURCE: s.source_positions,
            TARGET: s.target_positions,
            SUBTRACT_SOURCE: s.subtract_source_positions,
            SUBTRACT_TARGET: s.subtract_target_positions,
        }
        return {k: v for k, v in candidates.items() if v}

    def add(self, side: str, amount: torch.Tensor) -> None:
        """amount [h, w]: attention of that side's words at one layer call (summed over heads)."""
        if side in self.sums:
            self.sums[side] += amount
        else:
            self.sums[side] = amount.clone()

    def mask(self, size: tuple[int, int]) -> torch.Tensor | None:
        """[1, 1, H, W] bool mask at latent size, or None before any map was seen (with a given region: the
        region until then)."""
        region = self.spec.region
        if not any(k in self.sums for k in (SOURCE, TARGET)) and region is None:
            return None
        cells = None
        if region is not None:  # the same every step: scaled once per size and device, not in every evaluation
            device = _device(self.sums, region)
            key = (tuple(size), device)
            if key not in self.region_cells:
                self.region_cells[key] = region_mask(region.to(device), size)
            cells = self.region_cells[key]
        return _united(self.sums, self.spec.threshold, size, cells)


def _side_mask(amount: torch.Tensor, size: tuple[int, int], threshold: float, pool: bool) -> torch.Tensor:
    m = amount[None, None].float()  # [1, 1, h, w]
    if pool:
        m = F.max_pool2d(m, kernel_size=3, stride=1, padding=1)
    m = F.interpolate(m, size=size, mode="nearest")
    m = m / m.amax().clamp_min(torch.finfo(m.dtype).tiny)
    return m > threshold


def region_mask(region: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A given mask [h, w] (0..1, any size) as a [1, 1, H, W] bool mask at latent size: averaged over each
    latent cell when shrinking (a pixel-size mask), repeated when growing (an attention-map-size mask)."""
    m = region[None, None].float()
    shrink = m.shape[-2] >= size[0] and m.shape[-1] >= size[1]
    m = F.interpolate(m, size=size, mode="area" if shrink else "nearest")
    return m > REGION_THRESHOLD


def blend_mask(sums: dict[str, torch.Tensor], threshold: float, size: tuple[int, int],
               region: torch.Tensor | None = None) -> torch.Tensor:
    """Union of the pooled source- and target-word masks and the region, minus the unpooled subtract-word
    masks."""
    cells = None if region is None else region_mask(region.to(_device(sums, region)), size)
    return _united(sums, threshold, size, cells)


def _device(sums: dict[str, torch.Tensor], region: torch.Tensor) -> torch.device:
    """Where the maps are (the region's own device before any map was seen)."""
    return next(iter(sums.values())).device if sums else region.device


def _united(sums: dict[str, torch.Tensor], threshold: float, size: tuple[int, int],
            region_cells: torch.Tensor | None) -> torch.Tensor:
    """blend_mask with the region already at latent size ([1, 1, H, W] bool)."""
    pooled = [_side_mask(sums[side], size, threshold, pool=True) for side in (SOURCE, TARGET) if side in sums]
    if region_cells is not None:
        pooled.append(region_cells)
    if not pooled:
        raise P2PError("local blend needs the maps of a source or target word, or a mask")
    keep = pooled[0]
    for m in pooled[1:]:
        keep = keep | m
    for side in (SUBTRACT_SOURCE, SUBTRACT_TARGET):
        if side in sums:
            keep = keep & ~_side_mask(sums[side], size, threshold, pool=False)
    return keep


def blend(source: torch.Tensor, edited: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """source, edited [C, H, W] (or batched); mask [1, 1, H, W] bool. Selection, not arithmetic, so
    values outside the mask are the source's bit for bit."""
    return torch.where(mask[0], edited, source)
