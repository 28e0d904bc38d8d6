"""Real-image inversion: from a clean latent to the noise that regenerates it, and how to keep to that path.

Latents are in the sampler's form, x = x0 + sigma * eps (ComfyUI's k-diffusion convention; for rectified-flow
models x = (1 - sigma) * x0 + sigma * eps, where the same Euler steps in sigma apply); `sigmas` is the
run's schedule [sigma_0 > ... > sigma_N = 0], and `trajectory[i]` is the latent at `sigmas[i]`, so
trajectory[N] is the clean latent and trajectory[0] the noise sampling starts from.

* DDIM inversion walks the schedule backwards with the deterministic DDIM/Euler update, predicting the
  noise at the next (higher) level from the current latent, as the reference implementations do.
* Direct inversion (Ju et al., ICLR 2024) keeps the source item exactly on that path during editing:
  at every evaluation its latent is the trajectory's, and its prediction is the one whose DDIM step lands
  on the trajectory's next latent. The edits run unaltered.
* Null-text inversion (Mokady et al., CVPR 2023) optimises the unconditional text embedding per step so
  that guided DDIM steps land on the path.

`denoise(x [B, C, H, W], sigma) -> [B, C, H, W]` callables wrap the host's model.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .errors import P2PError

__all__ = ["Inversion", "METHODS", "ddim_step", "ddim_inversion", "null_text_inversion", "landing_prediction",
           "trajectory_at", "vp_scale"]

METHODS = ("direct", "null_text", "negative_prompt", "ddim")
Denoise = Callable[[torch.Tensor, float], torch.Tensor]


@dataclass(frozen=True, eq=False)
class Inversion:
    """An inverted image: its path under a schedule, and what the method needs to retrace it."""

    method: str
    sigmas: torch.Tensor  # [N + 1], descending to 0
    trajectory: torch.Tensor  # [N + 1, C, H, W] (model space, sampler form)
    cfg: float
    null_contexts: torch.Tensor | None = None  # [N, T, D]: null_text's unconditional context per step

    def __post_init__(self):
        if self.method not in METHODS:
            raise P2PError(f"unknown inversion method {self.method!r}; expected one of {', '.join(METHODS)}")
        if not math.isfinite(self.cfg):
            raise P2PError(f"its guidance scale is {self.cfg}, not a finite number")
        named = {"sigmas": (self.sigmas, 1), "trajectory": (self.trajectory, 4)}
        if self.method == "null_text" and self.null_contexts is None:
            raise P2PError("a null-text inversion needs its unconditional contexts")
        if self.null_contexts is not None:
            named["null_contexts"] = (self.null_contexts, 3)  # [N, T, D]
        for name, (tensor, rank) in named.items():
            if tensor.ndim != rank:
                raise P2PError(f"its {name} tensor has {tensor.ndim} dimensions instead of {rank}")
            if not tensor.is_floating_point():
                raise P2PError(f"its {name} tensor is {tensor.dtype}, not floating point")
            if not torch.isfinite(tensor).all():
                raise P2PError(f"its {name} tensor holds NaN or infinite values")
        sigmas = self.sigmas
        if sigmas.shape[0] < 2 or sigmas[-1] != 0 or not (sigmas[:-1] > sigmas[1:]).all():
            raise P2PError("its sigmas are not a noise schedule (descending to 0)")
        if self.trajectory.shape[0] != sigmas.shape[0]:
            raise P2PError(f"its trajectory has {self.trajectory.shape[0]} latents for {sigmas.shape[0]} sigmas; "
                           "an inversion needs one latent per sigma")
        if self.null_contexts is not None and self.null_contexts.shape[0] != self.steps:
            raise P2PError(f"its null-text inversion has {self.null_contexts.shape[0]} unconditional contexts for "
                           f"{self.steps} steps; it needs one per step")

    @property
    def steps(self) -> int:
        return self.sigmas.shape[0] - 1

    @property
    def noise(self) -> torch.Tensor:
        """[C, H, W]: the latent sampling starts from."""
        return self.trajectory[0]


def vp_scale(sigma: float) -> float:
    """1 / sqrt(1 + sigma^2): from the sampler's form to unit-variance (the reference's latents)."""
    return 1.0 / math.sqrt(1.0 + sigma * sigma)


def ddim_step(x: torch.Tensor, denoised: torch.Tensor, sigma: float, sigma_next: float) -> torch.Tensor:
    """The deterministic DDIM update in the sampler's form (ComfyUI's euler/ddim)."""
    if sigma == 0:
        return denoised
    return x + (x - denoised) * ((sigma_next - sigma) / sigma)


def ddim_inversion(denoise: Denoise, x0: torch.Tensor, sigmas: torch.Tensor,
                   on_step: Callable[[int], None] | None = None, flow: bool = False) -> torch.Tensor:
    """x0 [1, C, H, W] -> trajectory [N + 1, C, H, W] with trajectory[N] = x0 (N model evaluations).

    `flow`: a rectified-flow model (Flux, Chroma, SD3), whose latents are x = (1 - sigma) x0 + sigma eps. Its
    sampler form is its model's input at every level, so the step is plain Euler inversion; the update is the
    same Euler step in sigma either way ((x - denoised) / sigma is the flow's velocity there).
    """
    levels = [float(s) for s in sigmas]
    x = x0
    path = [x0]
    for i in range(len(levels) - 1, 0, -1):  # from sigma_N = 0 up to sigma_0
        low, high = levels[i], levels[i - 1]
        # The noise is predicted at the level being stepped to, from the current latent: the model sees the
        # current unit-variance latent (x / sqrt(1 + low^2)) labelled with the higher level, as the reference does.
        seen = x if flow else x * (vp_scale(low) / vp_scale(high))
        eps = (seen - denoise(seen, high)) / high
        x = x + eps * (high - low)
        path.append(x)
        if on_step is not None:
            on_step(len(levels) - i)
    return torch.cat(path[::-1])


def trajectory_at(inversion: Inversion, sigma: float) -> torch.Tensor:
    """[C, H, W]: the path's latent at a noise level (exact at scheduled levels; linear in sigma between
    two of them, for samplers that evaluate in between)."""
    sigmas = inversion.sigmas
    matches = torch.isclose(sigmas, torch.tensor(float(sigma), dtype=sigmas.dtype), rtol=1e-4, atol=0.0)
    if matches.any():
        return inversion.trajectory[int(matches.nonzero()[0])]
    above = int((sigmas > sigma).nonzero()[-1]) if (sigmas > sigma).any() else 0
    below = min(above + 1, inversion.steps)
    s0, s1 = float(sigmas[above]), float(sigmas[below])
    t = 0.0 if s0 == s1 else (s0 - sigma) / (s0 - s1)
    return torch.lerp(inversion.trajectory[above], inversion.trajectory[below], t)


def landing_prediction(x: torch.Tensor, x_next: torch.Tensor, sigma: float, sigma_next: float) -> torch.Tensor:
    """The prediction (denoised) whose DDIM step from x at sigma lands exactly on x_next at sigma_next."""
    if sigma_next == sigma:
        return x
    return x - (x_next - x) * (sigma / (sigma_next - sigma))


def null_text_inversion(
    guided: Callable[[torch.Tensor, float, torch.Tensor], torch.Tensor],
    trajectory: torch.Tensor,
    sigmas: torch.Tensor,
    null_context: torch.Tensor,
    inner_steps: int = 10,
    early_stop: float = 1e-5,
    learning_rate: float = 1e-2,
    on_step: Callable[[int], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Optimise the unconditional context per step so that guided DDIM steps retrace `trajectory`.

    guided(x, sigma, context) is the classifier-free-guided prediction with `context` [T, D] as the
    unconditional branch's text (gradients flow to it). As the paper: Adam, warm start from the previous
    step's context, learning rate `learning_rate * (1 - i / (2N))` (0.01 down to 0.005 over 50 steps), at
    most `inner_steps` updates, stopping early when the loss (before the update) falls below
    `early_stop + i * 1e-3 / N` (2e-5 per step at 50 steps). The loss is the mean squared error of the
    unit-variance latents. Returns ([N, T, D] contexts, the reconstruction [1, C, H, W] they give, UNet
    passes used: each guided prediction is two, its backward pass two more).
    """
    levels = [float(s) for s in sigmas]
    steps = len(levels) - 1
    context = null_context.detach().clone()
    x = trajectory[0:1]
    contexts, passes = [], 0
    for i in range(steps):
        sigma, sigma_next = levels[i], levels[i + 1]
        target = trajectory[i + 1 : i + 2]
        scale = vp_scale(sigma_next)
        context = context.detach().clone().requires_grad_(True)  # a new leaf: stored contexts stay as they were
        optimizer = torch.optim.Adam([context], lr=learning_rate * (1.0 - i / (2 * steps)))
        threshold = early_stop + i * 1e-3 / steps
        for _ in range(inner_steps):
            with torch.enable_grad():
                loss = torch.nn.functional.mse_loss(
                    ddim_step(x, guided(x, sigma, context), sigma, sigma_next) * scale, target * scale)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
            optimizer.step()
            passes += 4
            if loss.item() < threshold:
                break
        context = context.detach()
        contexts.append(context)
        with torch.no_grad():
            x = ddim_step(x, guided(x, sigma, context), sigma, sigma_next)
        passes += 2
        if on_step is not None:
            on_step(i + 1)
    return torch.stack(contexts), x, passes
