"""Cross-image attention (Alaluf, Garibi, Patashnik, Averbuch-Elor and Cohen-Or, SIGGRAPH 2024): appearance transfer
between two inverted pictures of the same kind of object.

The output starts from the structure picture's inverted noise. In the decoder's self-attention layers its own
queries attend to the appearance picture's keys and values, which finds for every place of the structure the
semantically matching place of the appearance picture and takes its look from there:

    out = clip((p - mean(p)) * contrast + mean(p), 0, 1) @ v_app,    p = softmax(q_out k_app^T / sqrt(d))

The contrast (the paper's 1.67) sharpens the correspondence: probabilities below (1 - 1/contrast) of the row's mean
drop to 0 and the strong matches grow. The clip keeps the map from being a fused kernel's softmax, so it is computed
in query chunks that bound the scores held at once. Between steps the output latent's channel statistics are set to
the appearance latent's (AdaIN), which carries the overall colour; given the two objects' masks, only the
structure object's statistics are set to the appearance object's (masked AdaIN, the paper's default). Swap
guidance (the paper's 3.5) extrapolates from the output's prediction without the swap through the one with it, as
classifier-free guidance does from the empty prompt through the prompt:

    prediction = no_swap + strength * (swap - no_swap),    strength falling linearly from g to max(g / 2, 1)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .errors import P2PError
from .schedule import Window

__all__ = ["AppearanceSpec", "contrasted_attention", "latent_adain", "swap_guided", "SWAP_FACTORS", "MAX_SCORES"]

SWAP_FACTORS = (1, 2)  # the layers the paper swaps in: the decoder's at the latent's size and at half of it
MAX_SCORES = 1 << 24  # scores held at once by contrasted_attention (64 MB in float32)


@dataclass(frozen=True)
class AppearanceSpec:
    """The paper's defaults, as fractions of the steps: swap in 10-90% of the steps at the latent's size and
    10-70% at half of it (its code's ranges of 100 steps), AdaIN of the output latent from 20% on, swap guidance
    3.5 in the steps that swap."""

    start: float = 0.1
    end: float = 0.9
    end_half: float = 0.7  # the end for the layers at half of the latent's size
    contrast: float = 1.67
    adain_start: float = 0.2  # 1.0: no AdaIN
    swap_guidance: float = 3.5  # 1.0: none (one model evaluation a step instead of two)

    def __post_init__(self):
        for name in ("start", "end", "end_half", "adain_start"):
            value = getattr(self, name)
            if not (math.isfinite(value) and 0.0 <= value <= 1.0):
                raise P2PError(f"{name}: must be a fraction of the steps between 0 and 1, not {value}")
        for name in ("end", "end_half"):
            if getattr(self, name) < self.start:
                raise P2PError(f"{name}: the swap must end at or after its start ({self.start})")
        for name in ("contrast", "swap_guidance"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 1.0):
                raise P2PError(f"{name}: must be a finite number of at least 1, not {value}")

    def window(self, factor: int) -> Window | None:
        """The steps a layer at 1/factor of the latent's size swaps in; None for the layers it never does."""
        if factor == SWAP_FACTORS[0]:
            return Window(self.start, self.end)
        if factor == SWAP_FACTORS[1]:
            return Window(self.start, self.end_half)
        return None

    def swap_strength(self, step: int, num_steps: int) -> float:
        """The swap guidance of `step`: as the paper's code, falling linearly over the whole run from
        `swap_guidance` to max(swap_guidance / 2, 1), applied in the steps where some layer swaps; 1 elsewhere."""
        if self.swap_guidance == 1.0 or not Window(self.start, max(self.end, self.end_half)).contains(step, num_steps):
            return 1.0
        low = max(self.swap_guidance / 2, 1.0)
        return self.swap_guidance + (low - self.swap_guidance) * step / max(num_steps - 1, 1)


def contrasted_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, contrast: float,
                         max_scores: int = MAX_SCORES) -> torch.Tensor:
    """q [S, N, C], k and v [S, M, C] -> [S, N, C] in q's dtype: each head's softmax map, contrasted around its
    row mean and clipped to 0..1, applied to v. Computed in float32, in chunks of queries."""
    s, n, c = q.shape
    m, d = k.shape[1], c // heads

    def split(x: torch.Tensor) -> torch.Tensor:  # [S, L, C] -> [S, H, L, d] float32
        return x.reshape(x.shape[0], x.shape[1], heads, d).transpose(1, 2).float()

    qh, kh, vh = split(q), split(k), split(v)
    out = torch.empty(s, heads, n, d, dtype=torch.float32, device=q.device)
    rows = max(1, max_scores // (s * heads * m))
    for first in range(0, n, rows):
        p = (qh[:, :, first:first + rows] @ kh.transpose(-1, -2) / math.sqrt(d)).softmax(dim=-1)  # [S, H, r, M]
        mean = p.mean(dim=-1, keepdim=True)
        out[:, :, first:first + rows] = ((p - mean) * contrast + mean).clamp_(0.0, 1.0) @ vh
    return out.transpose(1, 2).reshape(s, n, c).to(q.dtype)


def swap_guided(no_swap: torch.Tensor, swap: torch.Tensor, strength: float) -> torch.Tensor:
    """no_swap + strength * (swap - no_swap): predictions of any shape, the same for both."""
    return no_swap + strength * (swap - no_swap)


def latent_adain(x: torch.Tensor, ref: torch.Tensor, cells: torch.Tensor | None = None,
                 ref_cells: torch.Tensor | None = None, eps: float = 1e-5) -> torch.Tensor:
    """x [C, H, W] with each channel's mean and spread set to ref's [C, H', W'].

    With `cells` [H, W] and `ref_cells` [H', W'] (bool, at least two cells each), the paper's masked AdaIN: the
    statistics of x's cells are set to those of ref's cells, and x is unchanged outside its cells, so an object
    takes the other object's colour and the background keeps its own."""
    xf, rf = x.float().flatten(1), ref.float().flatten(1)  # [C, N], [C, N']
    own = xf if cells is None else xf[:, cells.flatten()]  # [C, n]
    other = rf if ref_cells is None else rf[:, ref_cells.flatten()]  # [C, n']
    mean, std = own.mean(1, keepdim=True), (own.var(1, keepdim=True) + eps).sqrt()
    ref_mean, ref_std = other.mean(1, keepdim=True), (other.var(1, keepdim=True) + eps).sqrt()
    out = (xf - mean) / std * ref_std + ref_mean  # [C, N]
    if cells is not None:
        out = torch.where(cells.flatten(), out, xf)
    return out.reshape(x.shape).to(x.dtype)
