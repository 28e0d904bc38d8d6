"""Parsers for the small text languages the nodes accept.

* word lists:      "car, red car"            -> ["car", "red car"]
* word weights:    "fluffy: -2, red: 1.5"    -> [("fluffy", -2.0), ("red", 1.5)]
* word schedules:  "car: 0.2, hat: 0.1-0.6"  -> [("car", Window(0, 0.2)), ("hat", Window(0.1, 0.6))]
* batch items:     "1, 3-5"                  -> (1, 3, 4, 5)

Each entry is a phrase (one or more words of a prompt); entries are separated by commas or new lines.
Numbers may be written in scientific notation (1e-3, 2.5E+1); the words nan and inf are not numbers here.
"""

from __future__ import annotations

import re

from .errors import P2PError
from .schedule import Window

__all__ = ["parse_phrases", "parse_weights", "parse_schedule", "parse_items"]

_SEPARATORS = re.compile(r"[,\n;]")
MAX_ITEM = 4095  # item numbers beyond any batch size ComfyUI allows (EmptyLatentImage: 4096)
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"  # 1.5, -.5, 1e-3, 2.5E+1


def _entries(text: str) -> list[str]:
    return [e.strip() for e in _SEPARATORS.split(text or "") if e.strip()]


def parse_phrases(text: str) -> list[str]:
    return _entries(text)


def _split_entry(entry: str, example: str) -> tuple[str, str]:
    phrase, sep, value = entry.rpartition(":")
    if not sep or not phrase.strip() or not value.strip():
        raise P2PError(f'"{entry}" is not of the form {example}')
    return phrase.strip(), value.strip()


def parse_weights(text: str) -> list[tuple[str, float]]:
    out = []
    for entry in _entries(text):
        phrase, value = _split_entry(entry, '"word: weight" (for example "fluffy: -2, red: 1.5")')
        if not re.fullmatch(_NUMBER, value):
            raise P2PError(f'"{value}" in "{entry}" is not a number')
        out.append((phrase, float(value)))
    return out


def parse_schedule(text: str) -> list[tuple[str, Window]]:
    out = []
    example = '"word: end" or "word: start-end" with fractions of the steps (for example "car: 0.2, hat: 0-0.5")'
    for entry in _entries(text):
        phrase, value = _split_entry(entry, example)
        match = re.fullmatch(rf"({_NUMBER})(?:\s*-\s*({_NUMBER}))?", value)
        if not match:
            raise P2PError(f'"{value}" in "{entry}" is not a fraction or a range; write {example}')
        if match.group(2) is None:
            window = Window(0.0, float(match.group(1)))
        else:
            window = Window(float(match.group(1)), float(match.group(2)))
        out.append((phrase, window))
    return out


def parse_items(text: str) -> tuple[int, ...] | None:
    """Batch items counted from 0, as numbers and ranges; None for an empty text (meaning: the default items)."""
    items: set[int] = set()
    for entry in _entries(text):
        match = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", entry)
        if not match:
            raise P2PError(f'"{entry}" is not an item number or a range of them (for example "1, 3-5")')
        lo = int(match.group(1))
        hi = lo if match.group(2) is None else int(match.group(2))
        if hi < lo:
            raise P2PError(f'"{entry}" is a range that ends before it starts')
        if hi > MAX_ITEM:
            raise P2PError(f'"{entry}" names items beyond {MAX_ITEM}, more than a batch holds')
        items.update(range(lo, hi + 1))
    return tuple(sorted(items)) or None
