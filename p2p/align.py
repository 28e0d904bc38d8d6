"""Token mappings: which source attention columns each column of an edited prompt is made from.

Two ways to build one, as in the paper:
* word swap (`replace_mapping`): the prompts have the same number of words and word i of the edit
  takes the attention of word i of the source; a word with a different token count takes the
  source word's total attention split evenly over its tokens.
* refinement (`refine_mapping`): a global alignment of the token sequences (Needleman-Wunsch with
  the public code's scores and tie-breaks) matches tokens that are kept; inserted tokens keep the
  edited prompt's own attention, deleted ones are dropped, moved ones are matched where possible.

Start, end and padding positions are matched chunk by chunk, counting padding from the end token
(`_match_specials`). This fixes the public word-swap mapper, which maps every position after the
last swapped word to the same index, so a swapped word with a different token count shifted the
end token and padding onto the wrong source columns.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .errors import P2PError
from .tokens import PromptTokens

__all__ = ["TokenMapping", "replace_mapping", "refine_mapping", "identity_mapping", "global_align"]


@dataclass(frozen=True, eq=False)
class TokenMapping:
    """new_column[t] = sum_s source_column[s] * weights[s, t] + own_column[t] * own[t]."""

    weights: torch.Tensor  # [L_src, L_tgt] float32
    own: torch.Tensor  # [L_tgt] float32, 1 where the edit keeps its own attention (new tokens)

    def source_of(self, target_position: int) -> list[int]:
        """Source positions that feed one target position (for tests and display)."""
        return torch.nonzero(self.weights[:, target_position]).flatten().tolist()


def identity_mapping(tokens: PromptTokens) -> TokenMapping:
    n = tokens.length
    return TokenMapping(torch.eye(n), torch.zeros(n))


def replace_mapping(source: PromptTokens, target: PromptTokens) -> TokenMapping:
    if len(source.words) != len(target.words):
        raise P2PError(
            f"word swap needs the same number of words in both prompts; the source has {len(source.words)} "
            f"and the target {len(target.words)}. Use mode 'refine' to add, remove or move words"
        )
    weights = torch.zeros(source.length, target.length)
    for src_word, tgt_word in zip(source.words, target.words, strict=True):
        s, t = list(src_word.positions), list(tgt_word.positions)
        if len(s) == len(t):
            weights[s, t] = 1.0
        else:
            weights[torch.tensor(s)[:, None], torch.tensor(t)[None, :]] = 1.0 / len(t)
    _match_specials(source, target, weights)
    return TokenMapping(weights, torch.zeros(target.length))


def refine_mapping(source: PromptTokens, target: PromptTokens) -> TokenMapping:
    src_pos, tgt_pos = source.content_positions(), target.content_positions()
    # Start and end tokens frame the sequences as in the public aligner; they always match.
    x = [-2] + [source.pieces[i].token for i in src_pos] + [-3]
    y = [-2] + [target.pieces[i].token for i in tgt_pos] + [-3]
    weights = torch.zeros(source.length, target.length)
    own = torch.zeros(target.length)
    for j, i in enumerate(global_align(x, y)):
        if j == 0 or j == len(y) - 1:
            continue
        if i < 0:
            own[tgt_pos[j - 1]] = 1.0
        else:
            weights[src_pos[i - 1], tgt_pos[j - 1]] = 1.0
    _match_specials(source, target, weights)
    return TokenMapping(weights, own)


def global_align(x: Sequence[int], y: Sequence[int]) -> list[int]:
    """For each element of y, the index of its match in x, or -1 (an insertion).

    Scores and tie-breaks are those of the public `seq_aligner.global_align`: gap 0, match 1,
    mismatch -1; on equal scores prefer inserting y, then deleting x, then the diagonal.
    """
    gap, match, mismatch = 0, 1, -1
    n, m = len(x), len(y)
    score = [[0] * (m + 1) for _ in range(n + 1)]
    trace = [[0] * (m + 1) for _ in range(n + 1)]
    for j in range(1, m + 1):
        score[0][j], trace[0][j] = j * gap, 1
    for i in range(1, n + 1):
        score[i][0], trace[i][0] = i * gap, 2
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            left = score[i][j - 1] + gap
            up = score[i - 1][j] + gap
            diag = score[i - 1][j - 1] + (match if x[i - 1] == y[j - 1] else mismatch)
            best = max(left, up, diag)
            score[i][j] = best
            trace[i][j] = 1 if best == left else 2 if best == up else 3
    mapper = [-1] * m
    i, j = n, m
    while i > 0 or j > 0:
        if trace[i][j] == 3:
            i, j = i - 1, j - 1
            mapper[j] = i
        elif trace[i][j] == 1:
            j -= 1
        else:
            i -= 1
    return mapper


def _match_specials(source: PromptTokens, target: PromptTokens, weights: torch.Tensor) -> None:
    """Start token to start token (where the tokenizer has one: T5 has none), end token to end token, k-th padding
    after the end to k-th padding, chunk by chunk."""
    def kinds(tokens: PromptTokens) -> dict[bool, list[int]]:  # chunks with a start token (CLIP's) and without (T5's)
        out: dict[bool, list[int]] = {True: [], False: []}
        for chunk in range(tokens.num_chunks):
            out[tokens.chunk_specials(chunk)[0] is not None].append(chunk)
        return out

    src_kinds, tgt_kinds = kinds(source), kinds(target)
    for chunk in range(target.num_chunks):
        tgt_start, tgt_tail = target.chunk_specials(chunk)
        # the j-th chunk of a kind matches the source's j-th of that kind (SD3: CLIP's chunks, then T5's)
        same = src_kinds[tgt_start is not None]
        j = tgt_kinds[tgt_start is not None].index(chunk)
        src_chunk = same[min(j, len(same) - 1)] if same else min(chunk, source.num_chunks - 1)
        src_start, src_tail = source.chunk_specials(src_chunk)
        if tgt_start is not None and src_start is not None:
            weights[:, tgt_start] = 0.0
            weights[src_start, tgt_start] = 1.0
        for k, t in enumerate(tgt_tail):
            weights[:, t] = 0.0
            if src_tail:
                weights[src_tail[min(k, len(src_tail) - 1)], t] = 1.0
