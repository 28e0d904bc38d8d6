"""When injection happens: windows over the sampling steps, and the step of a model evaluation.

A window is a pair of fractions of the run's steps. Cross- and self-attention windows use the same
scale: with N steps, the window (a, b) covers steps floor(a*N) <= i < floor(b*N), computed on the
decimal the user wrote: 0.29 of 100 steps is 29 steps. (The public code scales the cross window by N+1
and the self window by N, and its int(0.29 * 100) is 28: 0.29 * 100 is 28.999999999999996 in floating
point.)

The step of a model evaluation is read off the noise level the sampler evaluates at, against the
run's sigma schedule, never by counting calls: samplers that evaluate the model several times per
step (heun, dpm_2, the SDE solvers) evaluate at noise levels between two scheduled ones, and those
evaluations belong to the earlier step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import torch

from .errors import P2PError

__all__ = ["Window", "step_of_sigma", "sigma_after", "steps_at", "token_alphas"]

def steps_at(fraction: float, num_steps: int) -> int:
    """floor(fraction * num_steps), exact for the fraction's shortest decimal form (repr)."""
    return math.floor(Fraction(repr(float(fraction))) * num_steps)


@dataclass(frozen=True)
class Window:
    start: float = 0.0
    end: float = 1.0

    def __post_init__(self):
        if not (0.0 <= self.start <= self.end <= 1.0):
            raise P2PError(f"a window needs 0 <= start <= end <= 1, got {self.start}-{self.end}")

    def first_step(self, num_steps: int) -> int:
        return steps_at(self.start, num_steps)

    def stop_step(self, num_steps: int) -> int:
        return steps_at(self.end, num_steps)

    def contains(self, step: int, num_steps: int) -> bool:
        return self.first_step(num_steps) <= step < self.stop_step(num_steps)


def step_of_sigma(sigma: float, sample_sigmas: Sequence[float]) -> int:
    """Index i of the step being taken when the model is evaluated at `sigma`.

    That is the last scheduled sigma at or above `sigma` (a small relative tolerance absorbs the
    round trip some samplers make through timesteps), clamped to the steps of the schedule.
    """
    num_steps = len(sample_sigmas) - 1
    threshold = sigma * (1.0 - 1e-4)
    at_or_above = sum(1 for s in sample_sigmas[:num_steps] if s >= threshold)
    return min(max(at_or_above - 1, 0), max(num_steps - 1, 0))


def sigma_after(sigma: float, sample_sigmas: Sequence[float]) -> float:
    """The scheduled noise level a step from `sigma` goes to: the largest one below it (0 after the last)."""
    following = [s for s in sample_sigmas if s < sigma * (1 - 1e-6)]
    return max(following) if following else 0.0


def token_alphas(length: int, default: Window, per_token: dict[int, Window], num_steps: int) -> torch.Tensor:
    """[num_steps, length] table: 1 where a token's attention is injected at a step."""
    table = torch.zeros(num_steps, length)
    table[default.first_step(num_steps) : default.stop_step(num_steps)] = 1.0
    for position, window in per_token.items():
        table[:, position] = 0.0
        table[window.first_step(num_steps) : window.stop_step(num_steps), position] = 1.0
    return table
