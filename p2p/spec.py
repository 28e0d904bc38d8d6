"""Edit specifications: frozen descriptions of what to inject, where and when.

An `EditBatch` is one source prompt and any number of `Edit`s, each an edited prompt generated
beside the source in the same sampling run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from .align import TokenMapping, refine_mapping, replace_mapping
from .errors import P2PError
from .schedule import Window, token_alphas
from .tokens import PromptTokens

__all__ = ["LocalBlend", "Edit", "EditBatch", "make_edit", "fraction", "phrase_positions", "MODES",
           "REWEIGHT_RANGE", "REGION_THRESHOLD"]

MODES = ("auto", "replace", "refine")
REWEIGHT_RANGE = (-10.0, 10.0)
REGION_THRESHOLD = 0.5  # a given blend mask covers the cells where it is above this


def fraction(value: float, name: str = "") -> float:
    """`value` as a float within 0..1. NaN is refused here: the host's number widgets clamp what is typed, but
    a NaN sent through its API passes every min/max comparison."""
    number = float(value)
    if not 0.0 <= number <= 1.0:  # false for NaN
        raise P2PError(f"{name} must be a number within 0..1, got {value}".lstrip())
    return number


def phrase_positions(tokens: PromptTokens, phrases: Sequence[Sequence[str]]) -> list[tuple[int, ...]]:
    """Token positions of each phrase (given as its words) in `tokens`.

    A word named by two phrases of one list is refused: the later value would silently win (windows) or
    multiply (weights), and neither is what a word written twice means.
    """
    named: dict[int, Sequence[str]] = {}  # position -> the phrase that named it
    located = []
    for phrase in phrases:
        positions = tokens.find(phrase)
        for p in positions:
            if p in named:
                raise P2PError(_named_twice(tokens, named[p], phrase, p))
        named.update((p, phrase) for p in positions)
        located.append(positions)
    return located


def _named_twice(tokens: PromptTokens, first: Sequence[str], second: Sequence[str], position: int) -> str:
    first_text, second_text = " ".join(first).lower(), " ".join(second).lower()
    if first_text == second_text:
        return f'"{first_text}" is given twice'
    word = next(w.text for w in tokens.words if position in w.positions)
    return f'"{first_text}" and "{second_text}" both name the word "{word}"; give each word once'


@dataclass(frozen=True)
class LocalBlend:
    """Keep the source outside a mask made from the attention of the named words, or given as a region.

    The mask is the union of where the source words attend in the source image, where the target words
    attend in the edited image and the region, minus where the subtract words attend.
    """

    source_positions: tuple[int, ...]
    target_positions: tuple[int, ...]
    subtract_source_positions: tuple[int, ...] = ()
    subtract_target_positions: tuple[int, ...] = ()
    threshold: float = 0.3
    start: float = 0.2  # fraction of the steps after which blending starts
    region: torch.Tensor | None = field(default=None, compare=False)  # [h, w] in 0..1: a given mask, any size

    def __post_init__(self):
        if not self.source_positions and not self.target_positions and self.region is None:
            raise P2PError("local blend needs at least one source or target word, or a mask")
        fraction(self.threshold, "threshold")
        fraction(self.start, "start")
        if self.region is not None:
            if self.region.ndim != 2 or 0 in self.region.shape:
                raise P2PError(f"a mask must be one [height, width] map, not of shape {tuple(self.region.shape)}")
            if not bool(torch.isfinite(self.region).all()):
                raise P2PError("the mask holds NaN or infinite values")

    def no_effect(self) -> list[tuple[str, str]]:
        """Why this blend cannot change anything: (field, reason) pairs, none when it can."""
        reasons = []
        words = bool(self.source_positions or self.target_positions)
        if self.threshold >= 1.0 and self.region is None:  # a given region is a mask of its own
            reasons.append(("threshold", "is 1: no pixel's attention is strictly above the strongest one, so the "
                            "mask is empty and the edit is reset to the source everywhere from 'start' on"))
        if self.start >= 1.0:
            reasons.append(("start", "is 1: blending would start after the last step, so it never happens"))
        if self.region is not None and not words and not bool((self.region > REGION_THRESHOLD).any()):
            reasons.append(("mask", "is empty (no value above 0.5): the edit is reset to the source everywhere "
                            "from 'start' on"))
        if self.region is None and (set(self.source_positions) <= set(self.subtract_source_positions)
                                    and set(self.target_positions) <= set(self.subtract_target_positions)):
            reasons.append(("subtract_words", "cover every blend word: all that is left to edit is a rim, one cell "
                            "of the attention map wide, around those words"))
        return reasons


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

    def reweighted(self, entries: Sequence[tuple[Sequence[str], float]]) -> Edit:
        """Multiply the attention of each phrase's words (of the target) by its weight.

        A word named twice in one call is refused (`phrase_positions`); separate calls multiply.
        """
        lo, hi = REWEIGHT_RANGE
        for _, weight in entries:
            if not lo <= weight <= hi:  # false for NaN
                raise P2PError(f"weight {weight} is outside {lo:g}..{hi:g}")
        located = phrase_positions(self.target, [phrase for phrase, _ in entries])
        added = tuple((p, float(weight))
                      for positions, (_, weight) in zip(located, entries, strict=True) for p in positions)
        return dataclasses.replace(self, weights=self.weights + added)

    def scheduled(self, entries: Sequence[tuple[Sequence[str], Window]]) -> Edit:
        """Give each phrase's words (of the target) their own cross-attention window, overriding `cross_window`.

        A word named twice in one call is refused (`phrase_positions`).
        """
        located = phrase_positions(self.target, [phrase for phrase, _ in entries])
        added = tuple((p, window) for positions, (_, window) in zip(located, entries, strict=True) for p in positions)
        return dataclasses.replace(self, word_windows=self.word_windows + added)

    def blended(self, blend: LocalBlend) -> Edit:
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

    def with_edit(self, edit: Edit) -> EditBatch:
        return dataclasses.replace(self, edits=self.edits + (edit,))

    def with_last(self, edit: Edit) -> EditBatch:
        return dataclasses.replace(self, edits=self.edits[:-1] + (edit,))


def make_edit(
    source: PromptTokens,
    target: PromptTokens,
    mode: str = "auto",
    cross_replace: float = 0.8,
    self_replace: float = 0.4,
    self_min_downsample: int = 4,
) -> Edit:
    """Build an edit of `source` into `target` (per-word windows: `Edit.scheduled`).

    mode "auto" swaps words when both prompts have the same number of words and refines otherwise.
    """
    if mode not in MODES:
        raise P2PError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
    if mode == "auto":
        mode = "replace" if len(source.words) == len(target.words) else "refine"
    mapping = replace_mapping(source, target) if mode == "replace" else refine_mapping(source, target)
    return Edit(
        target=target,
        mapping=mapping,
        mode=mode,
        cross_window=Window(0.0, fraction(cross_replace, "cross_replace")),
        self_window=Window(0.0, fraction(self_replace, "self_replace")),
        self_min_downsample=self_min_downsample,
    )
