"""Attention grounding for the demo model's second training phase.

A model this small, trained on the diffusion loss alone, spreads every word's cross-attention over the
whole picture (a colour word took about 65% of a 16x16 layer's attention, averaged over the picture), so
a changed word reaches every pixel through its value vector and Prompt-to-Prompt's maps hold nothing in
place. Real
checkpoints attend the other way: a word's map lies on its object and the rest goes to the start token,
which under the text encoder's causal attention is the same for every prompt. The grounding loss teaches
the demo model that habit from the world's exact masks (in the spirit of TokenCompose, Wang et al. 2024):
at a position inside object j, the attention mass outside {start token, object j's words} is penalised;
at a background position, the mass outside {start token, background words}. Positions on an object's
edge are left free.

    groups = token_groups(scene, count_tokens)               # per object, then the background
    allowed, cells = allowed_tokens(groups, masks, side, 77)
    loss = grounding_loss(probs, allowed, cells, weight)
"""

from __future__ import annotations

import numpy as np
import torch

from .world import Scene, _object_phrase

__all__ = ["token_groups", "allowed_tokens", "grounding_loss", "AttentionRecorder"]

START = 0  # the start token's position in the context


def token_groups(scene: Scene, count_tokens) -> list[list[int]]:
    """Context positions of each object's phrase, then of the background phrase (empty if unsaid).

    `count_tokens(text)` is the number of tokens the tokenizer makes of `text` (without start/end);
    CLIP's BPE splits on words, so a caption's tokens are its pieces' tokens in order.
    """
    pieces: list[tuple[int | None, str]] = []
    for j, obj in enumerate(scene.objects):
        if j:
            pieces.append((None, "and"))
        pieces.append((j, _object_phrase(obj)))
    if scene.say_background:
        pieces.append((len(scene.objects), f"on a {scene.background} background"))
    groups: list[list[int]] = [[] for _ in range(len(scene.objects) + 1)]
    position = 1
    for owner, text in pieces:
        n = count_tokens(text)
        if owner is not None:
            groups[owner] = list(range(position, position + n))
        position += n
    return groups


def allowed_tokens(groups: list[list[int]], masks: list[np.ndarray], side: int, length: int):
    """For one scene at one attention resolution (side x side):

    allowed [side*side, length] bool: the tokens each position may attend to;
    cells [side*side] bool: the positions the loss applies to (inside one object, or on the background).
    """
    pool = masks[0].shape[0] // side  # masks may be finer than the attention grid
    shares = [m.reshape(side, pool, side, pool).mean(axis=(1, 3)).reshape(-1) for m in masks]  # [side*side] each
    allowed = np.zeros((side * side, length), bool)
    allowed[:, START] = True
    cells = np.zeros(side * side, bool)
    background = np.sum(shares, axis=0) == 0  # a scene has at least one object
    allowed[np.ix_(background, groups[-1])] = True
    cells |= background
    for j, share in enumerate(shares):
        inside = share >= 0.5
        allowed[np.ix_(inside, groups[j])] = True
        cells |= inside
    return allowed, cells


def grounding_loss(probs: torch.Tensor, allowed: torch.Tensor, cells: torch.Tensor, weight: torch.Tensor):
    """probs [B, H, N, T] cross-attention; allowed [B, N, T] bool; cells [B, N] bool; weight [B].

    Mean over heads and loss positions of -log(attention mass on the allowed tokens), weighted per sample.
    """
    mass = (probs * allowed[:, None].to(probs.dtype)).sum(-1).clamp_min(1e-6)  # [B, H, N]
    per_cell = -mass.log().mean(1)  # [B, N]
    w = cells.to(probs.dtype) * weight[:, None]  # [B, N]
    return (per_cell * w).sum() / w.sum().clamp_min(1.0)


class AttentionRecorder:
    """Forward hooks on a UNet's cross-attention layers that keep their probabilities while `active`."""

    def __init__(self, unet: torch.nn.Module):
        self.active, self.records = False, []  # records: probs [B, H, N, T] in float32
        for name, m in unet.named_modules():
            if name.endswith("attn2"):
                m.register_forward_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs, output):
        if not self.active:
            return
        x, context = args[0], kwargs["context"]  # [B, N, C], [B, T, Cc]
        q, k = module.to_q(x), module.to_k(context)
        b, n, c = q.shape
        h = module.heads
        q = q.float().view(b, n, h, c // h).transpose(1, 2)  # [B, H, N, d]
        k = k.float().view(b, -1, h, c // h).transpose(1, 2)  # [B, H, T, d]
        self.records.append(torch.softmax(q @ k.transpose(-1, -2) * (c // h) ** -0.5, dim=-1))
