"""Token layout of an encoded prompt, and words located in it.

A prompt is encoded in chunks (77 positions each for CLIP): a start token, the prompt's tokens,
an end token and padding. Long prompts use several chunks, concatenated along the token axis.
`PromptTokens` records, for every position of that concatenated sequence, its role and the piece
of text it carries, and groups the prompt's tokens into words (a word may span several tokens:
"croutons" is "cr", "out", "ons").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from .errors import P2PError

__all__ = ["START", "WORD", "END", "PAD", "TokenPiece", "Word", "PromptTokens"]

START, WORD, END, PAD = "start", "word", "end", "pad"
_ROLES = (START, WORD, END, PAD)


@dataclass(frozen=True)
class TokenPiece:
    """One position of an encoded prompt."""

    token: int  # vocabulary id; -1 for a textual-inversion embedding vector
    role: str  # START | WORD | END | PAD
    text: str = ""  # the characters this token completes (word tokens only), lower case; a character
    # split over several tokens belongs to its last one, so a word's pieces join to its text
    ends_word: bool = False  # the last token of a word

    def __post_init__(self):
        if self.role not in _ROLES:
            raise ValueError(f"unknown token role {self.role!r}")


@dataclass(frozen=True)
class Word:
    text: str
    positions: tuple[int, ...]  # token positions in the concatenated sequence


@dataclass(frozen=True)
class PromptTokens:
    """The encoded token sequence of one prompt (all chunks concatenated)."""

    text: str
    pieces: tuple[TokenPiece, ...]
    chunk_length: int = 77
    # chunks of other lengths after the whole chunks of `chunk_length` (SD3: T5's tokens after CLIP's chunks)
    extra_chunks: tuple[int, ...] = ()
    words: tuple[Word, ...] = field(init=False)

    def __post_init__(self):
        regular = len(self.pieces) - sum(self.extra_chunks)
        if not self.pieces or regular < 0 or regular % self.chunk_length or not all(n > 0 for n in self.extra_chunks):
            raise ValueError(f"{len(self.pieces)} token positions is not a whole number of {self.chunk_length}-token "
                             f"chunks and chunks of {list(self.extra_chunks)}")
        object.__setattr__(self, "words", _group_words(self.pieces))

    @property
    def length(self) -> int:
        return len(self.pieces)

    @property
    def num_chunks(self) -> int:
        return len(self._chunk_starts())

    def _chunk_starts(self) -> list[int]:
        regular = self.length - sum(self.extra_chunks)
        starts = list(range(0, regular, self.chunk_length))
        for n in self.extra_chunks:
            starts.append(regular)
            regular += n
        return starts

    def content_positions(self) -> list[int]:
        return [i for i, p in enumerate(self.pieces) if p.role == WORD]

    def chunk_specials(self, chunk: int) -> tuple[int | None, list[int]]:
        """(start position, or None for a tokenizer without one (T5), [end, pad, pad, ...] positions) of a chunk."""
        starts = [*self._chunk_starts(), self.length]
        span = range(starts[chunk], starts[chunk + 1])
        start = next((i for i in span if self.pieces[i].role == START), None)
        tail = [i for i in span if self.pieces[i].role in (END, PAD)]
        return start, tail

    def find(self, phrase: Sequence[str]) -> tuple[int, ...]:
        """Token positions of every occurrence of a phrase, given as its words.

        Raises P2PError if the phrase does not occur.
        """
        wanted = [w.lower() for w in phrase if w]
        if not wanted:
            raise P2PError("empty word")
        texts = [w.text for w in self.words]
        found: list[int] = []
        for i in range(len(texts) - len(wanted) + 1):
            if texts[i : i + len(wanted)] == wanted:
                for w in self.words[i : i + len(wanted)]:
                    found.extend(w.positions)
        if not found:
            shown = " ".join(wanted)
            raise P2PError(f'"{shown}" is not a word of the prompt "{self.text}" (its words: {", ".join(texts)})')
        return tuple(sorted(set(found)))


def _group_words(pieces: Sequence[TokenPiece]) -> tuple[Word, ...]:
    words: list[Word] = []
    text, positions = "", []
    for i, piece in enumerate(pieces):
        if piece.role != WORD:
            continue  # a word split across chunks continues after the next chunk's start token
        text += piece.text
        positions.append(i)
        if piece.ends_word:
            words.append(Word(text, tuple(positions)))
            text, positions = "", []
    if positions:
        words.append(Word(text, tuple(positions)))
    return tuple(words)
