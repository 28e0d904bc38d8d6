"""Edit specifications: frozen descriptions of what to inject, where and when.

An `EditBatch` is one source prompt and any number of `Edit`s, each an edited prompt generated
beside the source in the same sampling run.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence

import torch

from .align import TokenMapping, refine_mapping, replace_mapping
from .errors import P2PError
from .schedule import Window, token_alphas
from .tokens import PromptTokens

__all__ = ["LocalBlend", "Edit", "EditBatch", "make_edit", "MODES", "REWEIGHT_RANGE"]

MODES = ("auto", "replace", "refine")
REWEIGHT_RANGE = (-10.0, 10.0)


@dataclass(frozen=True)
class LocalBlend:
    """Keep the source outside a mask made from the attention of the named words.

    The mask is the union of where the source words attend in the source image and where the target
    words attend in the edited image, minus where the subtract words attend.
    """

    source_positions: tuple[int, ...]
    target_positions: tuple[int, ...]
    subtract_source_positions: tuple[int, ...] = ()
    subtract_target_positions: tuple[int, ...] = ()
    threshold: float = 0.3
    start: float = 0.2  # fraction of the steps after which blending starts

    def __post_init__(self):
        if not self.source_positions and not self.target_positions:
            raise P2PError("local blend needs at least one source or target word")
        if not 0.0 <= self.threshold <= 1.0:
            raise P2PError(f"threshold must be within 0..1, got {self.threshold}")
        if not 0.0 <= self.start <= 1.0:
            raise P2PError(f"start must be within 0..1, got {self.start}")


@dataclass(frozen=True, eq=False)
class Edit:
    target: PromptTokens
    mapping: TokenMapping
    mode: str  # "replace" or "refine"
    cross_window: Window  # default cross-attention injection window
    self_window: Window
    word_windows: tuple[tuple[int, Window], ...] = ()  # per target position, overrides cross_window
    self_min_downsample: int = 4  # self-attention is injected in layers at 1/this resolution and coarser
    weights: tuple[tuple[int, float], ...] = ()  # per target position, attention multiplier
    local_blend: LocalBlend | None = None

    def cross_alphas(self, num_steps: int) -> torch.Tensor:
        """[num_steps, L_tgt]: 1 where the source attention is injected into a target token."""
        return token_alphas(self.target.length, self.cross_window, dict(self.word_windows), num_steps)

    def equalizer(self) -> torch.Tensor:
        """[L_tgt] attention multipliers (1 for words that are not re-weighted)."""
        eq = torch.ones(self.target.length)
        for position, weight in self.weights:
            eq[position] *= weight
        return eq

    def reweighted(self, positions: Sequence[int], weight: float) -> "Edit":
        lo, hi = REWEIGHT_RANGE
        if not lo <= weight <= hi:
            raise P2PError(f"weight {weight} is outside {lo:g}..{hi:g}")
        return dataclasses.replace(self, weights=self.weights + tuple((p, float(weight)) for p in positions))

    def blended(self, blend: LocalBlend) -> "Edit":
        return dataclasses.replace(self, local_blend=blend)


@dataclass(frozen=True, eq=False)
class EditBatch:
    source: PromptTokens
    edits: tuple[Edit, ...]

    def __post_init__(self):
        if not self.edits:
            raise P2PError("an edit batch needs at least one edited prompt")

    @property
    def size(self) -> int:
        """Latent batch size: the source and each edit."""
        return 1 + len(self.edits)

    def with_edit(self, edit: Edit) -> "EditBatch":
        return dataclasses.replace(self, edits=self.edits + (edit,))

    def with_last(self, edit: Edit) -> "EditBatch":
        return dataclasses.replace(self, edits=self.edits[:-1] + (edit,))


def make_edit(
    source: PromptTokens,
    target: PromptTokens,
    mode: str = "auto",
    cross_replace: float = 0.8,
    self_replace: float = 0.4,
    word_windows: Sequence[tuple[Sequence[str], Window]] = (),
    self_min_downsample: int = 4,
) -> Edit:
    """Build an edit of `source` into `target`.

    mode "auto" swaps words when both prompts have the same number of words and refines otherwise.
    `word_windows` gives some words of the target their own cross-attention window.
    """
    if mode not in MODES:
        raise P2PError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
    if mode == "auto":
        mode = "replace" if len(source.words) == len(target.words) else "refine"
    mapping = replace_mapping(source, target) if mode == "replace" else refine_mapping(source, target)
    windows = tuple((p, window) for phrase, window in word_windows for p in target.find(phrase))
    return Edit(
        target=target,
        mapping=mapping,
        mode=mode,
        cross_window=Window(0.0, cross_replace),
        self_window=Window(0.0, self_replace),
        word_windows=windows,
        self_min_downsample=self_min_downsample,
    )
