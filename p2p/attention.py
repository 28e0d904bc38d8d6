"""Attention arithmetic on one batch row at a time.

Shapes: q [Nq, H*d], k and v [T, H*d] for one row; probabilities [H, Nq, T].
"""

from __future__ import annotations

import torch

__all__ = ["split_heads", "merge_heads", "probabilities", "apply_probabilities", "mix_cross"]


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[N, H*d] -> [H, N, d]"""
    n, hd = x.shape
    return x.reshape(n, heads, hd // heads).transpose(0, 1)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """[H, N, d] -> [N, H*d]"""
    h, n, d = x.shape
    return x.transpose(0, 1).reshape(n, h * d)


def probabilities(q: torch.Tensor, k: torch.Tensor, heads: int) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) in float32 (the cross-attention map): [H, Nq, T]."""
    qh, kh = split_heads(q.float(), heads), split_heads(k.float(), heads)  # [H, Nq, d], [H, T, d]
    scale = qh.shape[-1] ** -0.5
    return torch.softmax(torch.bmm(qh, kh.transpose(1, 2)) * scale, dim=-1)


def apply_probabilities(probs: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """probs [H, Nq, L] (L <= T: the row's own prompt, the first L positions of its context), v [T, H*d]
    -> [Nq, H*d]."""
    vh = split_heads(v[: probs.shape[-1]].float(), heads)  # [H, L, d]
    return merge_heads(torch.bmm(probs, vh)).to(v.dtype)


def mix_cross(
    source: torch.Tensor,  # [H, Nq, Ls] source map
    edit: torch.Tensor,  # [H, Nq, Le] the edit's own map
    weights: torch.Tensor,  # [Ls, Le] token mapping
    own: torch.Tensor,  # [Le] 1 where the edit keeps its own column
    alpha: torch.Tensor,  # [Le] 1 where injection is on at this step
    equalizer: torch.Tensor,  # [Le] re-weighting factors
) -> torch.Tensor:
    """The edited prompt's cross-attention map at one step: [H, Nq, Le].

    Inside the window a token's column is the mapped source column (or its own, for a new token),
    scaled by its weight; outside it, the edit's own column. Rows are not renormalised (as in the paper).
    """
    injected = (torch.matmul(source, weights) + edit * own) * equalizer
    return alpha * injected + (1.0 - alpha) * edit
