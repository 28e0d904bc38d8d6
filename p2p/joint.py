"""Attention arithmetic for MM-DiT joint attention (Flux, Chroma, SD3), where the T text tokens and the I image tokens
share one softmax.

An image query's row of the joint map is split into its image-to-text part (the cross-attention analogue, T
columns) and its image-to-image part (I columns). Prompt-to-Prompt edits the image-to-text part: the edit's map over
its words becomes the source's map over the source's words, mapped, re-weighted and windowed as on a UNet
(`mix_cross`), while the share of attention each image token gives the text as a whole (its text mass) and the
image-to-image part stay the edit's own. For an edit row this is

    out[img] = fused(q, k, v)[img] + mass * (A - P) @ v[text]

where P [H, I, T] is the edit's own image-to-text map normalised over the text (softmax of its text scores), mass
the share of the joint softmax the text gets, and A the edited map over text. The fused kernel also returns each
query's log-normaliser (log-sum-exp), from which mass comes with the [H, I, T] text scores alone: the [H, I, I]
image-to-image map is never materialised.

Shapes: q, k, v [R, H, L, d] with L = T + I; text maps [H, I, T].
"""

from __future__ import annotations

import torch

__all__ = ["heads_first", "row_mask", "fused_lse_agrees", "row_runs", "keep_tokens", "spread_tokens", "put_tokens",
           "keep_mask",
           "attention_with_lse", "text_map", "MAP_ELEMENTS"]

# Image-to-text maps are computed in groups of heads of at most this many elements (16 MB in float32), so that
# a 1024x1024 Flux picture (24 heads, 4096 image tokens, 256 text tokens: 4 heads a group) holds little beside
# the attention's own tensors.
MAP_ELEMENTS = 1 << 22


def heads_first(x: torch.Tensor, token_axis: int, heads: int) -> torch.Tensor:
    """[R, H, L, d] (token_axis 2, returned as is) or [R, L, H * d] / [R, L, H, d] (token_axis 1) -> [R, H, L, d]."""
    if token_axis == 2:
        return x
    r, length = x.shape[:2]
    return x.reshape(r, length, heads, -1).transpose(1, 2)


def row_mask(mask: torch.Tensor | None, rows: list[int], batch: int) -> torch.Tensor | None:
    """The host's attention mask ([L, L], [B, L, L] or [B, H, L, L], bool or additive) for some batch rows, as an
    additive float mask [n or 1, H or 1, L, L]."""
    if mask is None:
        return None
    m = mask
    while m.ndim < 4:
        m = m.unsqueeze(0) if m.ndim == 2 else m.unsqueeze(1)
    if m.shape[0] == batch and batch > 1:
        m = m[rows]
    if m.dtype == torch.bool:
        m = torch.zeros(m.shape, device=m.device).masked_fill(~m, float("-inf"))
    return m


def row_runs(rows: list[int], lengths: list[int]) -> list[slice]:
    """Sorted batch rows as runs of consecutive rows of one text length: slices, so that a run of a batch is a view
    of it, not a copy."""
    out: list[slice] = []
    for r in rows:
        last = out[-1] if out else None
        if last is not None and last.stop == r and lengths[last.start] == lengths[r]:
            out[-1] = slice(last.start, r + 1)
        else:
            out.append(slice(r, r + 1))
    return out


def keep_tokens(x: torch.Tensor, length: int, text_tokens: int, token_axis: int) -> torch.Tensor:
    """x without the text positions [length, T) on its token axis: a row's own prompt, then the image. Prompts of
    a batch are padded to the longest; a shorter one attends over its own tokens only, as it would alone."""
    if length == text_tokens:
        return x
    image = x.shape[token_axis] - text_tokens
    return torch.cat([x.narrow(token_axis, 0, length), x.narrow(token_axis, text_tokens, image)], dim=token_axis)


def spread_tokens(x: torch.Tensor, length: int, text_tokens: int, token_axis: int) -> torch.Tensor:
    """The inverse of `keep_tokens` for an attention output: zeros at the left-out text positions (no other token
    attends to them)."""
    if length == text_tokens:
        return x
    gap = list(x.shape)
    gap[token_axis] = text_tokens - length
    image = x.shape[token_axis] - length
    return torch.cat([x.narrow(token_axis, 0, length), x.new_zeros(gap), x.narrow(token_axis, length, image)],
                     dim=token_axis)


def put_tokens(out: torch.Tensor, row: int, lo: int, hi: int, x: torch.Tensor | None) -> None:
    """In place: out[row]'s tokens [lo, hi) = x [H, hi - lo, d] (zeros for None), in the host's output layout
    ([R, L, H * d] or [R, H, L, d])."""
    if x is None:
        (out[row, :, lo:hi] if out.ndim == 4 else out[row, lo:hi]).zero_()
        return
    target = out[row, :, lo:hi] if out.ndim == 4 else out[row, lo:hi].view(hi - lo, x.shape[0], -1).transpose(0, 1)
    target.copy_(x)


def keep_mask(mask: torch.Tensor | None, length: int, text_tokens: int) -> torch.Tensor | None:
    """An additive mask [.., L, L] for the tokens `keep_tokens` keeps."""
    if mask is None or length == text_tokens:
        return mask
    kept = torch.cat([torch.arange(length), torch.arange(text_tokens, mask.shape[-1])]).to(mask.device)
    return mask.index_select(-2, kept).index_select(-1, kept)


def attention_with_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
                       chunk: int = 1024, fused: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q k^T / sqrt(d) + mask) v and each query's log-normaliser: ([n, H, Lq, d], [n, H, Lq] float32).

    PyTorch's fused kernels return the log-sum-exp beside the output (the CPU flash kernel; on CUDA the memory-
    efficient one). Elsewhere, where a kernel refuses the inputs, or with `fused` False, the scores are computed
    `chunk` queries at a time, so at most [n, H, chunk, L] of the map exists at once.
    """
    if mask is not None:
        mask = mask.to(q.dtype)
    if not fused:
        return _chunked_attention_with_lse(q, k, v, mask, chunk)
    try:
        if q.device.type == "cpu":
            out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, False,
                                                                                  attn_mask=mask)[:2]
            return out, lse.float()
        if q.device.type == "cuda":
            bias = None if mask is None else mask.expand(q.shape[0], q.shape[1], q.shape[2], k.shape[2])
            out, lse = torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, bias, True)[:2]
            return out, lse[..., : q.shape[2]].float()
    except (RuntimeError, NotImplementedError):
        pass
    return _chunked_attention_with_lse(q, k, v, mask, chunk)


def fused_lse_agrees(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether the fused kernel's log-normaliser on this device and dtype is the natural log-sum-exp of the scaled
    scores, checked once on a small random input against the chunked computation (a kernel of another convention,
    base 2 say, would otherwise edit silently wrong)."""
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 40, 64, generator=gen).to(device, dtype) for _ in range(3))
    _, fused = attention_with_lse(q, k, v)
    _, exact = _chunked_attention_with_lse(q, k, v, None, 1024)
    return bool(torch.allclose(fused, exact, atol=0.05, rtol=0.01))


def _chunked_attention_with_lse(q, k, v, mask, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    scale = q.shape[-1] ** -0.5
    outs, lses = [], []
    for lo in range(0, q.shape[2], chunk):
        scores = torch.matmul(q[:, :, lo : lo + chunk].float(), k.float().transpose(-1, -2)) * scale  # [n, H, c, L]
        if mask is not None:
            scores = scores + mask[..., lo : lo + chunk, :].float()
        lse = torch.logsumexp(scores, dim=-1)  # [n, H, c]
        outs.append(torch.matmul(torch.exp(scores - lse[..., None]), v.float()).to(v.dtype))
        lses.append(lse)
    return torch.cat(outs, dim=2), torch.cat(lses, dim=2)


def text_map(qh: torch.Tensor, kh: torch.Tensor, mask: torch.Tensor | None, image_row: int, row: int, heads: slice,
             text_tokens: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A row's image-to-text scores q k^T / sqrt(d) (+ the mask's image-to-text part) in float32 over its own
    prompt's `length` tokens, and its map normalised over them, for some heads: the image queries of `image_row`
    (the source's, for a row that takes them), the text keys of `row`. qh, kh [R, H, L, d] (the image from
    `text_tokens` on), mask additive [R or 1, H or 1, L, L] or None -> ([h, I, length], [h, I, length])."""
    scores = torch.matmul(qh[image_row, heads, text_tokens:].float(),
                          kh[row, heads, :length].float().transpose(-1, -2))
    scores = scores * qh.shape[-1] ** -0.5
    if mask is not None:
        m = mask[min(row, mask.shape[0] - 1), heads if mask.shape[1] > 1 else slice(None), text_tokens:, :length]
        scores = scores + m.float()
    return scores, torch.softmax(scores, dim=-1)
