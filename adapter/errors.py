"""Errors that name the node and the input at fault."""

from __future__ import annotations

from contextlib import contextmanager

from ..p2p import P2PError

__all__ = ["input_error", "node_input", "check_schedule"]


def input_error(node: str, input_name: str, message: str) -> ValueError:
    return ValueError(f"{node}: input '{input_name}': {message}")


@contextmanager
def node_input(node: str, input_name: str):
    """Re-raise the engine's P2PError as a message that names the node and the input."""
    try:
        yield
    except P2PError as e:
        raise input_error(node, input_name, str(e)) from None


def check_schedule(node: str, input_name: str, sigmas, why: str) -> None:
    """Refuse a schedule with NaN or infinite noise levels (kl_optimal at 1 step), which would give a NaN picture;
    `why` says what gave them ("'kl_optimal' gives no usable noise levels for 1 steps")."""
    if not bool(sigmas.isfinite().all()):
        raise input_error(node, input_name, f"{why}; use more steps or another scheduler")
