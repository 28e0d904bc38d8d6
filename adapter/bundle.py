"""The P2P_EDIT value passed between nodes: the engine's edit batch plus the host's conditioning."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ..p2p import EditBatch
from .tokenize import WordSplitter

__all__ = ["EditBundle", "P2P_EDIT"]

P2P_EDIT = "P2P_EDIT"


@dataclass(frozen=True, eq=False)
class EditBundle:
    batch: EditBatch
    conditionings: tuple  # CONDITIONING of the source, then of each edit
    split_words: WordSplitter

    @property
    def source_prompt(self) -> str:
        return self.batch.source.text

    def with_batch(self, batch: EditBatch, conditioning=None) -> EditBundle:
        conds = self.conditionings if conditioning is None else self.conditionings + (conditioning,)
        return dataclasses.replace(self, batch=batch, conditionings=conds)

    def positive(self, extras: dict | None = None) -> list:
        """One CONDITIONING entry with a batch row per prompt: [source, edit 1, ..., edit N].

        `extras`: the options of the entry (ControlNet, area, mask, hooks...); by default the source's own.
        Prompts of different lengths are padded to the longest by repeating them (cut at that length):
        where a length divides the longest this is ComfyUI's own batching (attention over repeated keys
        is the same attention); where it does not, the attention patches attend over the row's own
        tokens only (`EditRun`). Never longer than the longest prompt, whatever the lengths' common
        multiple.
        """
        firsts = [c[0] for c in self.conditionings]
        tensors = [t for t, _ in firsts]  # [1, L_i, D]
        length = max(t.shape[1] for t in tensors)
        cond = torch.cat([t.repeat(1, -(-length // t.shape[1]), 1)[:, :length] for t in tensors])  # [1+N, L, D]
        meta = dict(firsts[0][1] if extras is None else extras)
        pooled = [m.get("pooled_output") for _, m in firsts]
        if all(isinstance(p, torch.Tensor) for p in pooled):  # Chroma's T5 has none: its entry is None
            meta["pooled_output"] = torch.cat(pooled)
        return [[cond, meta]]
