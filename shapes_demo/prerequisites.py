"""A recipe's prerequisites, trained first when missing: v3 starts from v2, whose files are not committed, and
a latent model needs its autoencoder before its pool of latents."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

__all__ = ["found_or_trained"]

T = TypeVar("T")


def found_or_trained(what: str, find: Callable[[], T | None], train: Callable[[], object]) -> T:
    """`find()`, after `train()` (the prerequisite's own recipe) when the first look finds nothing."""
    if (found := find()) is None:
        print(f"no {what} on disk: training it first (its recipe)", flush=True)
        train()
        if (found := find()) is None:
            raise RuntimeError(f"training {what} wrote nothing where it is looked for")
    return found
