"""Shared self-attention (StyleAligned, Hertz et al., CVPR 2024): each sharing item's self-attention also attends
to a reference item's keys and values, after AdaIN of its queries and keys to the reference's statistics.

For a sharing row with queries q, keys k, values v and its reference's k_ref, v_ref (all [N, C] per row):

    q' = adain(q, q_ref)   k' = adain(k, k_ref)   (v' = adain(v, v_ref) if asked)
    out = softmax([q' k'^T ; q' (s k_ref)^T + log w] / sqrt(d)) [v' ; v_ref]

s (`key_scale`, the paper's shared_score_scale) multiplies the reference's keys; w (`reference_weight`, e to the
paper's shared_score_shift) multiplies the reference's share of attention. With w = 1 this is one attention call
over the concatenated keys, computed by the host's own backend; otherwise two fused passes (own keys, reference
keys) merged through their log-normalisers, so the [N, 2N] map is never materialised.

The reference row itself is never changed, so a batch's reference item is what it would be without sharing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .capture import LAYER_GROUPS
from .errors import P2PError
from .joint import attention_with_lse

__all__ = ["ADAIN_MODES", "SharedAttentionSpec", "channel_stats", "adain", "sharing_rows", "merge_lse",
           "shared_attention", "shared_rows"]

# Which of the projected queries, keys and values are AdaIN-ed to the reference's statistics.
ADAIN_MODES = {
    "queries+keys": ("q", "k"),  # the paper's default
    "queries+keys+values": ("q", "k", "v"),
    "off": (),
}
ADAIN_EPS = 1e-5  # as the paper's code: std = sqrt(unbiased var + 1e-5)

Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # the host's attention, [R, N, C] in


@dataclass(frozen=True)
class SharedAttentionSpec:
    layers: str = "all"  # a key of LAYER_GROUPS: the paper shares every self-attention layer
    adain: str = "queries+keys"  # a key of ADAIN_MODES
    key_scale: float = 1.0  # multiplies the reference's keys (shared_score_scale)
    reference_weight: float = 1.0  # multiplies the reference's share of attention (exp(shared_score_shift))
    share_items: tuple[int, ...] | None = None  # batch items that share; None: every item but the reference (0)

    def __post_init__(self):
        if self.layers not in LAYER_GROUPS:
            raise P2PError(f"layers: unknown layer group {self.layers!r}; expected one of {list(LAYER_GROUPS)}")
        if self.adain not in ADAIN_MODES:
            raise P2PError(f"adain: unknown AdaIN mode {self.adain!r}; expected one of {list(ADAIN_MODES)}")
        for name in ("key_scale", "reference_weight"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise P2PError(f"{name} must be a finite number of at least 0, not {value}")
        if self.share_items is not None:
            if not self.share_items:
                raise P2PError("names no items")
            if 0 in self.share_items:
                raise P2PError("item 0 is the reference: it cannot share with itself")
            if min(self.share_items) < 0:
                raise P2PError("batch items are counted from 0")

    @property
    def blocks(self) -> tuple[str, ...]:
        return LAYER_GROUPS[self.layers]

    @property
    def shares(self) -> bool:
        """Whether any item attends to the reference (a weight of 0 leaves only AdaIN)."""
        return self.reference_weight > 0 or bool(ADAIN_MODES[self.adain])


def channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [R, N, C] -> (mean, std), each [R, 1, C] float32, over the tokens (unbiased variance + ADAIN_EPS)."""
    x = x.float()
    return x.mean(dim=1, keepdim=True), (x.var(dim=1, keepdim=True) + ADAIN_EPS).sqrt()


def adain(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """x [R, N, C] with each channel's token statistics set to those of ref [R or 1, N', C]; in x's dtype."""
    mean, std = channel_stats(x)
    ref_mean, ref_std = channel_stats(ref)
    return ((x.float() - mean) / std * ref_std + ref_mean).to(x.dtype)


def sharing_rows(chunks: int, batch: int, share_items: Sequence[int] | None) -> list[tuple[int, int]]:
    """(row, its reference row) for an attention call of `chunks` conditioning chunks of `batch` items each: the
    reference of chunk c is its item 0 (row c * batch), so the unconditional rows share with the unconditional
    reference and the conditional rows with the conditional one, however the host splits the chunks."""
    items = range(1, batch) if share_items is None else sorted(i for i in set(share_items) if i < batch)
    return [(c * batch + i, c * batch) for c in range(chunks) for i in items]


def merge_lse(o1: torch.Tensor, l1: torch.Tensor, o2: torch.Tensor, l2: torch.Tensor, log_w: float) -> torch.Tensor:
    """The attention over the union of two key sets, from each set's output o [S, H, N, d] and log-normaliser
    l [S, H, N], with the second set's probabilities multiplied by e^log_w: float32 [S, H, N, d]."""
    share = torch.sigmoid(l2 + log_w - l1).unsqueeze(-1)  # the second set's share of the joint softmax
    return o1.float() + share * (o2.float() - o1.float())


def shared_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ref_k: torch.Tensor, ref_v: torch.Tensor,
                     heads: int, spec: SharedAttentionSpec, attend: Attend, fused: bool = True) -> torch.Tensor:
    """Sharing rows' attention: q, k, v [S, N, C] (AdaIN already applied), ref_k, ref_v [S, M, C] (each row's
    reference) -> [S, N, C] in q's dtype. `attend` is the host's attention (used when the weight is 1); `fused`
    whether the fused kernel's log-normaliser may be used (else it is computed in query chunks)."""
    keys = torch.cat([k, ref_k * spec.key_scale if spec.key_scale != 1 else ref_k], dim=1)  # [S, N + M, C]
    if spec.reference_weight == 1:
        return attend(q, keys, torch.cat([v, ref_v], dim=1))
    if spec.reference_weight == 0:
        return attend(q, k, v)
    s, n, c = q.shape
    d = c // heads

    def split(x):  # [S, L, C] -> [S, H, L, d]
        return x.reshape(x.shape[0], x.shape[1], heads, d).transpose(1, 2)

    qh = split(q)
    out = torch.empty(s, heads, n, d, dtype=torch.float32, device=q.device)
    for row in range(s):  # a row at a time: the chunked fallback then holds at most [1, H, 1024, N] of scores
        own, own_lse = attention_with_lse(qh[row : row + 1], split(k[row : row + 1]), split(v[row : row + 1]),
                                          fused=fused)
        ref, ref_lse = attention_with_lse(qh[row : row + 1], split(keys[row : row + 1, n:]),
                                          split(ref_v[row : row + 1]), fused=fused)
        out[row] = merge_lse(own, own_lse, ref, ref_lse, math.log(spec.reference_weight))[0]
    return out.transpose(1, 2).reshape(s, n, c).to(q.dtype)


def shared_rows(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pairs: Sequence[tuple[int, int]], heads: int,
                spec: SharedAttentionSpec, attend: Attend, fused: bool = True, upcast: bool = False) -> torch.Tensor:
    """The sharing rows of one self-attention call: q, k, v [R, N, C] the whole batch's, `pairs` (row, its
    reference row) as `sharing_rows` gives -> [S, N, C] in q's dtype, one per pair. AdaIN per the spec, then
    `shared_attention`; `upcast`: from float32 queries and keys (for the merged path, weight not 0 or 1)."""
    rows, refs = [r for r, _ in pairs], [r for _, r in pairs]
    parts = {"q": q, "k": k, "v": v}
    own = {name: t[rows] for name, t in parts.items()}  # [S, N, C]
    for name in ADAIN_MODES[spec.adain]:
        own[name] = adain(own[name], parts[name][refs])
    qs, ks, ref_k = (t.float() if upcast else t for t in (own["q"], own["k"], k[refs]))
    return shared_attention(qs, ks, own["v"], ref_k, v[refs], heads, spec, attend, fused=fused).to(q.dtype)
