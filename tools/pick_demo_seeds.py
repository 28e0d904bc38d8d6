"""Pick the seed of each demo workflow: the first seed (0-15) whose edit is clear, measured as ShapesBench does.

    .venv/bin/python -m tools.pick_demo_seeds [WORKFLOW ...]

Prints the seeds for DEMO_SEEDS in tools/build_workflows.py. A seed is accepted when the source draws
every object of its prompt and the edit does what the workflow says; the first such seed is taken, so
the choice is reproducible rather than hand-picked.
"""

from __future__ import annotations

import sys

import numpy as np

from bench.segments import SegmentBench, world_mask
from bench.shapesbench import Bench
from bench.style_aligned import StyleBench
from shapes_demo import metrics

from .build_workflows import DEMO_CAPTURE, SEGMENTS_PROMPTS, STYLE_PROMPTS

MIN_AREA = 12


def _drawn(image, color) -> np.ndarray | None:
    mask = metrics.object_mask(image, color)
    return mask if metrics.area(mask) >= MIN_AREA else None


def _word_swap(bench: Bench, seed: int) -> bool:
    source, edit = bench.p2p("a red circle and a small blue square", ["a yellow circle and a small blue square"], seed)
    red, blue = _drawn(source, "red"), _drawn(source, "blue")
    return (red is not None and blue is not None and metrics.iou(red, metrics.object_mask(edit, "yellow")) >= 0.8
            and metrics.iou(blue, metrics.object_mask(edit, "blue")) >= 0.8
            and metrics.background_of(edit) == metrics.background_of(source))


def _refinement(bench: Bench, seed: int) -> bool:
    source, edit = bench.p2p("a purple triangle", ["a striped purple triangle on a gray background"], seed)
    purple = _drawn(source, "purple")
    if purple is None:
        return False
    background = metrics.classify(edit)[~metrics.dilate(purple, 1)]
    kept_background = (background == "background:gray").mean() >= 0.8
    return kept_background and metrics.iou(purple, metrics.object_mask(edit, "purple")) >= 0.5


def _reweight(bench: Bench, seed: int) -> bool:
    images = bench.p2p("a big green square", ["a big green square"] * 3, seed,
                       reweights=["green: 0", "green: 2", "green: 4"])
    areas = [metrics.area(metrics.object_mask(img, "green")) for img in images[1:]]
    return _drawn(images[0], "green") is not None and areas[0] < areas[1] < areas[2] and areas[2] >= 1.3 * areas[0]


def _local_blend(bench: Bench, seed: int) -> bool:
    source, edit = bench.p2p("a red circle on the left and a blue square on the right",
                             ["a green circle on the left and a blue square on the right"], seed,
                             blend=("red circle", "green circle", 0.3, 0.2))
    red, blue = _drawn(source, "red"), _drawn(source, "blue")
    return (red is not None and blue is not None and metrics.object_mask(edit, "green")[red].mean() >= 0.8
            and metrics.psnr(source, edit, blue) >= 35)


def _style_aligned(bench: Bench, seed: int) -> bool:
    """Every item takes the reference's black background with the patch, at most one without it, and each
    draws its own colour."""
    assert isinstance(bench, StyleBench)
    styled, _ = bench.batch(list(STYLE_PROMPTS), seed, style={})
    plain, _ = bench.batch(list(STYLE_PROMPTS), seed, style=None)
    colors = [prompt.split()[1] for prompt in STYLE_PROMPTS[1:]]  # "a blue square" -> blue
    black = [metrics.background_of(img) == "black" for img in styled[1:]]
    black_plain = [metrics.background_of(img) == "black" for img in plain[1:]]
    drawn = [_drawn(img, c) is not None for img, c in zip(styled[1:], colors, strict=True)]
    return all(black) and sum(black_plain) <= 1 and all(drawn)


def _attention_segments(bench: Bench, seed: int) -> bool:
    """The circle's segments cover the red circle (IoU at least 0.5 in the world's pixels); blended by them, the
    circle turns yellow and the square is kept."""
    assert isinstance(bench, SegmentBench)
    images, attention = bench.run(*SEGMENTS_PROMPTS, seed, capture=DEMO_CAPTURE)
    source = images[0]
    red, blue = _drawn(source, "red"), _drawn(source, "blue")
    if red is None or blue is None:
        return False
    masks, _ = bench.segments(attention, "circle")
    edit = bench.run(*SEGMENTS_PROMPTS, seed, blend={"mask": masks}, capture=DEMO_CAPTURE)[0][1]
    return (metrics.iou(world_mask(masks[0]), red) >= 0.5 and metrics.object_mask(edit, "yellow")[red].mean() >= 0.8
            and metrics.psnr(source, edit, blue) >= 35)


class DemoBench(StyleBench, SegmentBench):
    """Both benches' runs on one loaded model."""


CHECKS = {"p2p_demo_word_swap": _word_swap, "p2p_demo_refinement": _refinement, "p2p_demo_reweight": _reweight,
          "p2p_demo_local_blend": _local_blend, "p2p_demo_attention_maps": _word_swap,
          "p2p_demo_style_aligned": _style_aligned, "p2p_demo_attention_segments": _attention_segments}


def main() -> None:
    names = sys.argv[1:] or list(CHECKS)
    bench = DemoBench()
    seeds = {}
    for name in names:
        seeds[name] = next((seed for seed in range(16) if CHECKS[name](bench, seed)), None)
        print(f"{name}: {seeds[name]}", flush=True)
    print("DEMO_SEEDS =", seeds)


if __name__ == "__main__":
    main()
