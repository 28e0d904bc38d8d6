"""Attention capture: per-token cross-attention maps (and self-attention maps) aggregated during a run.

Inside each attention call the maps are reduced at once (mean over heads; repeated contexts already
folded by the caller) and added to running sums on the compute device, so memory holds one aggregate per
item, not one map per layer and step, unless per-step maps are asked for.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

import torch

from .errors import P2PError
from .schedule import Window
from .tokens import PromptTokens

__all__ = ["CaptureSpec", "AttentionMaps", "AttentionCapture", "LAYER_GROUPS", "SELF_MAX_TOKENS", "prompt_words",
           "word_maps", "self_components"]

# Which UNet blocks a capture takes maps from ("down" = input blocks, "up" = output blocks).
LAYER_GROUPS = {
    "down+up": ("input", "output"),  # the paper's choice
    "all": ("input", "middle", "output"),
    "down": ("input",),
    "middle": ("middle",),
    "up": ("output",),
}
SELF_MAX_TOKENS = 32 * 32  # self-attention maps are [N, N]; beyond this they are not kept (64 MB per head)


@dataclass(frozen=True)
class CaptureSpec:
    downsample: int | None = None  # resolution class (latent size / layer size); None: the one nearest 1/4
    window: Window = Window(0.0, 1.0)  # steps to average over
    layers: str = "down+up"  # a key of LAYER_GROUPS
    per_step: bool = False  # also keep one map per step
    self_attention: bool = True  # also aggregate self-attention maps (for the principal-components view)


@dataclass(frozen=True, eq=False)
class AttentionMaps:
    """What a run captured, on the CPU. Item 0 is the source, item k the k-th edit."""

    prompts: tuple[PromptTokens, ...]
    spatial: tuple[int, int]  # (h, w) of the maps
    cross: tuple[torch.Tensor, ...]  # per item [h, w, L_item]: mean attention probability of each token
    self_maps: tuple[torch.Tensor, ...] | None  # per item [h*w, h*w], or None
    per_step: tuple[torch.Tensor, ...] | None  # per item [steps, h, w, L_item], or None
    steps: tuple[int, ...]  # the steps averaged over
    layer_count: int  # attention layers averaged over
    blend_masks: tuple[torch.Tensor | None, ...] = ()  # per edit: the last local-blend mask [H, W] of the latent (bool)
    latent_size: tuple[int, int] | None = None  # (H, W) of the run's latent, for masks made from the maps


class AttentionCapture:
    """Running sums for one run; owned by the run's EditRun and dropped with it."""

    def __init__(self, spec: CaptureSpec, prompts: tuple[PromptTokens, ...], num_steps: int, downsample: int):
        if spec.layers not in LAYER_GROUPS:
            raise ValueError(f"unknown layer group {spec.layers!r}; expected one of {list(LAYER_GROUPS)}")
        self.spec = spec
        self.prompts = prompts
        self.num_steps = num_steps
        self.downsample = downsample
        self.blocks = LAYER_GROUPS[spec.layers]
        self.cross_sum: list[torch.Tensor | None] = [None] * len(prompts)  # [h, w, L] each
        self.self_sum: list[torch.Tensor | None] = [None] * len(prompts)  # [N, N] each
        self.step_sums: list[dict[int, torch.Tensor]] = [dict() for _ in prompts]  # step -> [h, w, L]
        self.calls: dict[int, int] = {}  # step -> cross-attention calls added (per item)
        self.self_calls = 0
        self.layers: set = set()
        self.spatial: tuple[int, int] | None = None

    def wants(self, step: int, downsample: int, block: str) -> bool:
        return (
            downsample == self.downsample
            and block in self.blocks
            and self.spec.window.contains(step, self.num_steps)
        )

    def wants_step(self, step: int) -> bool:
        """For MM-DiTs, whose every joint block is captured: whether this step is in the window."""
        return self.spec.window.contains(step, self.num_steps)

    def add_cross(self, item: int, step: int, probs: torch.Tensor, spatial: tuple[int, int], layer) -> None:
        """probs [H, Nq, L] (repeated contexts folded; for an edit, the map in effect) of one item, one call."""
        amount = probs.detach().float().mean(0).reshape(*spatial, -1)  # [h, w, L]
        self.spatial = spatial
        self.layers.add(layer)
        total = self.cross_sum[item]
        self.cross_sum[item] = amount if total is None else total + amount
        if item == 0:
            self.calls[step] = self.calls.get(step, 0) + 1
        if self.spec.per_step:
            sums = self.step_sums[item]
            sums[step] = amount if step not in sums else sums[step] + amount

    def add_self(self, item: int, probs: torch.Tensor) -> None:
        """probs [H, N, N] of one item at one self-attention call."""
        if probs.shape[-1] > SELF_MAX_TOKENS:
            return
        amount = probs.detach().float().mean(0)  # [N, N]
        total = self.self_sum[item]
        self.self_sum[item] = amount if total is None else total + amount
        if item == 0:
            self.self_calls += 1

    def result(self, blend_masks=(), latent_size: tuple[int, int] | None = None) -> AttentionMaps | None:
        """The averages, on the CPU; None if no layer matched (no step in the window, say)."""
        cross_sums = [s for s in self.cross_sum if s is not None]
        if self.spatial is None or len(cross_sums) != len(self.cross_sum):
            return None
        calls = sum(self.calls.values())
        cross = tuple((s / calls).cpu() for s in cross_sums)
        self_maps = None
        self_sums = [s for s in self.self_sum if s is not None]
        if self.spec.self_attention and self.self_calls and len(self_sums) == len(self.self_sum):
            self_maps = tuple((s / self.self_calls).cpu() for s in self_sums)
        steps = tuple(sorted(self.calls))
        per_step = None
        if self.spec.per_step:
            per_step = tuple(torch.stack([sums[s] / self.calls[s] for s in steps]).cpu() for sums in self.step_sums)
        return AttentionMaps(
            prompts=self.prompts,
            spatial=self.spatial,
            cross=cross,
            self_maps=self_maps,
            per_step=per_step,
            steps=steps,
            layer_count=len(self.layers),
            blend_masks=tuple(None if m is None else m.reshape(m.shape[-2:]).cpu() for m in blend_masks),
            latent_size=latent_size,
        )


def prompt_words(tokens: PromptTokens) -> list[tuple[str, ...]]:
    """The distinct words of a prompt in order, lower-cased, punctuation left out (emoji kept); each a 1-word
    phrase."""
    seen: dict[str, None] = {}
    for word in tokens.words:
        text = word.text.lower()
        if not all(unicodedata.category(ch).startswith("P") for ch in text):  # punctuation only: skipped
            seen.setdefault(text)
    return [(w,) for w in seen]


def word_maps(
    maps: AttentionMaps, item: int, phrases: list[tuple[str, ...]] | None = None, step: int | None = None
) -> list[tuple[str, torch.Tensor]]:
    """(label, [h, w] map) per phrase (a tuple of words; default: each distinct word of the item's prompt):
    the summed attention of its tokens over every occurrence, not normalised. `step`: an index into
    `maps.steps`, for per-step maps."""
    tokens = maps.prompts[item]
    if step is None:
        cross = maps.cross[item]  # [h, w, L]
    elif maps.per_step is None:
        raise P2PError("no per-step maps were captured")
    else:
        cross = maps.per_step[item][step]
    chosen = prompt_words(tokens) if phrases is None else phrases
    return [(" ".join(phrase), cross[..., list(tokens.find(phrase))].sum(-1)) for phrase in chosen]


def self_components(maps: AttentionMaps, item: int, count: int = 6) -> list[torch.Tensor]:
    """The top principal components of an item's self-attention maps (rows: query pixels), each [h, w]
    scaled to 0..1, strongest first. Empty when self-attention maps were not captured."""
    if maps.self_maps is None:
        return []
    m = maps.self_maps[item].double()  # [N, N]
    m = m - m.mean(dim=0, keepdim=True)
    _, _, vh = torch.linalg.svd(m, full_matrices=False)  # rows of vh: components over key pixels
    h, w = maps.spatial
    out = []
    for v in vh[:count]:
        c = v.reshape(h, w)
        if c.abs().max() != c.max():  # an SVD sign is arbitrary: show the component's dominant side bright
            c = -c
        out.append(((c - c.min()) / (c.max() - c.min()).clamp_min(1e-12)).float())
    return out
