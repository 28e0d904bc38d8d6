"""The P2P_EDIT value passed between nodes: the engine's edit batch plus the host's conditioning."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..p2p import EditBatch
from .conditioning import stack_rows
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
        Prompts of different lengths are padded as `stack_rows` says; where a length does not divide the
        longest, the attention patches attend over the row's own tokens only (`EditRun`).
        """
        firsts = [c[0] for c in self.conditionings]
        return stack_rows(firsts, firsts[0][1] if extras is None else extras)
