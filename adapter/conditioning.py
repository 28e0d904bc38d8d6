"""CONDITIONING from other nodes (ControlNet, area and mask, strength, timestep range, hooks) applied to the
source and every edit: the text rows come from the edit, everything else from the conditioning given."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .errors import input_error

if TYPE_CHECKING:
    from .bundle import EditBundle

__all__ = ["conditioning_extras", "crops_latent", "stack_rows", "prompt_batch", "TEXT_KEYS"]

TEXT_KEYS = ("pooled_output",)  # what the edit's prompts provide, beside the text rows themselves


def conditioning_extras(node: str, positive: list, edit: EditBundle) -> dict:
    """The options of a one-entry CONDITIONING, less its text: what every row of the edit batch gets."""
    if not positive:
        raise input_error(node, "positive", "is empty: connect a conditioning (a CLIP Text Encode, a ControlNet "
                          "Apply...), or leave it unconnected")
    if len(positive) != 1:
        raise input_error(node, "positive", f"holds {len(positive)} conditionings (Conditioning (Combine), "
                          "several areas or timestep ranges); Prompt-to-Prompt takes one: its text comes from the "
                          "edit, and what was applied to it (ControlNet, area, mask, strength, timestep range, "
                          "hooks) goes to the source and every edit. Apply those nodes to a single prompt")
    tensor, extras = positive[0]
    width = edit.conditionings[0][0][0].shape[-1]
    if tensor.shape[-1] != width:
        raise input_error(node, "positive", f"was encoded by a text encoder of width {tensor.shape[-1]}, the edit's "
                          f"by one of width {width}: use the CLIP of the same checkpoint for both")
    if crops_latent(extras) and any(e.local_blend is not None for e in edit.batch.edits):
        raise input_error(node, "positive", "sets an area (Conditioning Set Area, or a mask with 'mask bounds'): "
                          "the prompts then see only that part of the latent, and P2P Local Blend needs their "
                          "attention over the whole picture. Remove the area or the local blend")
    return {k: v for k, v in extras.items() if k not in TEXT_KEYS}


def crops_latent(extras: dict) -> bool:
    """Whether the prompts run on a crop of the latent (an area, or a mask's bounds)."""
    return "area" in extras or bool(extras.get("set_area_to_bounds"))


def stack_rows(entries: list, meta: dict) -> list:
    """One CONDITIONING entry with a batch row per entry (each [[1, L_i, D], options] of one prompt) and the
    options `meta`. Prompts of different lengths are padded to the longest by repeating them (cut at that
    length): where a length divides the longest this is ComfyUI's own batching (attention over repeated keys is
    the same attention). Pooled outputs are stacked where every prompt has one (Chroma's T5 has none)."""
    tensors = [t for t, _ in entries]  # [1, L_i, D]
    length = max(t.shape[1] for t in tensors)
    cond = torch.cat([t.repeat(1, -(-length // t.shape[1]), 1)[:, :length] for t in tensors])  # [n, L, D]
    meta = dict(meta)
    pooled = [m.get("pooled_output") for _, m in entries]
    if all(isinstance(p, torch.Tensor) for p in pooled):
        meta["pooled_output"] = torch.cat(pooled)
    return [[cond, meta]]


def prompt_batch(clip, prompts: list[str]) -> list:
    """CONDITIONING with row i = prompt i; ComfyUI gives latent item i row i (cycling when the batch is longer)."""
    entries = [clip.encode_from_tokens_scheduled(clip.tokenize(p))[0] for p in prompts]
    return stack_rows(entries, entries[0][1])
