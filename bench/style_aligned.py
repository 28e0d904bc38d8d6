"""StyleBench: P2P Style Aligned on the demo model, against the same batch sampled without it.

    .venv/bin/python -m bench.style_aligned [--sets 50] [--steps 30] [--variants default,adain_off,...]

Each set is one batch of 4: item 0, the reference, names a colour, a shape, a background and (in half of the
sets) `striped`; items 1-3 name only their own colour and shape, so their background and texture are free. The
style the items should take is what their prompts leave free: the reference's background and stripes. Measured
in the world's pixels (`shapes_demo.metrics`) per item: whether its background is the reference's, whether its
texture (striped or plain) is the reference's, and whether it still draws its own colour and shape (content
kept). The same batch, seed and prompts without the patch is the baseline. Prints a markdown table with the
machine described.
"""

from __future__ import annotations

import argparse
import random
import time

import numpy as np
import torch

from shapes_demo import metrics
from shapes_demo.world import BACKGROUNDS, COLORS, SHAPES, STRIPE_SHADE, with_article

from .machine import describe
from .shapesbench import CFG, MIN_OBJECT, SAMPLER, SCHEDULER, STEPS, Bench, _shape_of, node_defaults

ITEMS = 4  # the reference and three items
STRIPED_SHARE = 0.2  # an object is striped when at least this share of its pixels is the stripe shade
VARIANTS = {  # P2PStyleAligned's inputs other than the model; "default" is the node's defaults
    "default": {},
    "adain_off": {"adain": "off"},
    "up_only": {"layers": "up"},
    "weight_2": {"reference_weight": 2.0},
    "key_scale_0.5": {"key_scale": 0.5},
}


def striped(image: np.ndarray, color: str, mask: np.ndarray) -> bool:
    """Whether the object of `color` under `mask` shows the world's stripe shade."""
    pixels = image[mask]
    full, shade = np.array(COLORS[color]), np.array(COLORS[color]) * STRIPE_SHADE
    nearer_shade = ((pixels - shade) ** 2).sum(-1) < ((pixels - full) ** 2).sum(-1)
    return bool(nearer_shade.mean() >= STRIPED_SHARE)


def style_set(i: int) -> tuple[list[str], str, bool, list[tuple[str, str]]]:
    """Set i: the prompts, the reference's background and texture, and each item's (colour, shape)."""
    rng = random.Random(9000 + i)
    background, stripes = rng.choice(list(BACKGROUNDS)), i % 2 == 0
    color, shape = rng.choice(list(COLORS)), rng.choice(SHAPES)
    texture = "striped " if stripes else ""
    prompts = [f"{with_article(f'{texture}{color} {shape}')} on a {background} background"]
    items = [(rng.choice(list(COLORS)), rng.choice(SHAPES)) for _ in range(ITEMS - 1)]
    prompts += [with_article(f"{c} {s}") for c, s in items]
    return prompts, background, stripes, items


class StyleBench(Bench):
    def batch(self, prompts: list[str], seed: int, style: dict | None) -> tuple[np.ndarray, torch.Tensor]:
        """The decoded batch [B, 32, 32, 3] and its latent, with P2PStyleAligned's inputs `style` (None: off)."""
        model = self.model
        if style is not None:
            model = self.pack.P2PStyleAligned.execute(model, **{**node_defaults(self.pack.P2PStyleAligned), **style})[0]
        positive = self.pack.P2PPromptBatch.execute(self.clip, "\n".join(prompts))[0]
        latent = {"samples": self.latent["samples"].repeat(len(prompts), 1, 1, 1)}
        out = self.nodes.common_ksampler(model, seed, self.steps, self.cfg, SAMPLER, SCHEDULER, positive,
                                         self.negative, latent)[0]
        return self._decode(out), out["samples"]


def measure(bench: StyleBench, sets: int, variants: list[str]) -> tuple[dict, dict]:
    """Per run ("baseline" or a variant): metric -> per-item values; and the reference's largest difference
    from the baseline's item 0 per variant."""
    scores: dict[str, dict[str, list[float]]] = {}
    reference_diff: dict[str, float] = {}
    for i in range(sets):
        prompts, background, stripes, items = style_set(i)
        runs = {"baseline": None, **{v: VARIANTS[v] for v in variants}}
        base_latent = None
        for name, style in runs.items():
            images, latent = bench.batch(prompts, seed=i, style=style)
            if name == "baseline":
                base_latent = latent
            else:
                assert base_latent is not None
                diff = float((latent[0] - base_latent[0]).abs().max())
                reference_diff[name] = max(reference_diff.get(name, 0.0), diff)
            row = scores.setdefault(name, {})
            for image, (color, shape) in zip(images[1:], items, strict=True):
                mask = metrics.object_mask(image, color)
                drawn = metrics.area(mask) >= MIN_OBJECT
                row.setdefault("background = reference's", []).append(float(metrics.background_of(image) == background))
                row.setdefault("texture = reference's", []).append(
                    float(drawn and striped(image, color, mask) == stripes))
                row.setdefault("own colour drawn", []).append(float(drawn))
                row.setdefault("own shape drawn", []).append(float(drawn and _shape_of(mask) == shape))
    return scores, reference_diff


def table(scores: dict, reference_diff: dict) -> str:
    names = list(scores)
    lines = ["| metric (share of items) | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for metric in scores["baseline"]:
        lines.append(f"| {metric} | " + " | ".join(f"{np.mean(scores[n][metric]):.1%}" for n in names) + " |")
    lines.append("| reference item, largest difference from the baseline's | — | "
                 + " | ".join(f"{reference_diff[n]:.1e}" for n in names[1:]) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", type=int, default=50)
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    args = parser.parse_args()
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    torch.set_num_threads(2)
    started = time.perf_counter()
    bench = StyleBench(args.steps, CFG)
    scores, reference_diff = measure(bench, args.sets, variants)
    print(f"\nStyleBench: {args.sets} sets of {ITEMS} (the reference and {ITEMS - 1} items), {args.steps} steps "
          f"{SAMPLER}/{SCHEDULER}, cfg {CFG}; machine: {describe()}; {(time.perf_counter() - started) / 60:.1f} min\n")
    print(table(scores, reference_diff))


if __name__ == "__main__":
    main()
