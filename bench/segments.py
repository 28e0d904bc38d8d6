"""SegmentBench: P2P Attention Segments on the demo model, against the attention-threshold mask of P2P Local Blend.

    .venv/bin/python -m bench.segments [--scenes 50] [--steps 30] [--resolution 1/1]

Each scene is the local-blend scene of ShapesBench: two objects of different colours and shapes, the left one's
colour swapped. Three runs of P2PSampler with the same seed: one capturing attention (the node defaults, with
self-attention; `--resolution` sets P2PAttentionCapture's), one blended by P2PLocalBlend's words (the attention-
threshold mask, node defaults) and one blended by the mask of the left object's segments (P2PAttentionSegments
with the two shape words, node defaults; the blend's words left empty). Measured in the world's 32x32 pixels
against the source picture's exact object masks (`shapes_demo.metrics.object_mask`): the IoU of each mask (a
segment mask per shape word, and the blend mask), and what the blend keeps and changes. Prints a markdown table
with the machine described.
"""

from __future__ import annotations

import argparse
import random
import time

import numpy as np
import torch

from p2p.capture import word_maps
from shapes_demo import metrics
from shapes_demo.world import COLORS, SHAPES, SIZE

from .machine import describe
from .shapesbench import CFG, MIN_OBJECT, SAMPLER, SCHEDULER, STEPS, Bench, _object, _other, node_defaults

SEGMENTS, ATTENTION = "segments", "attention threshold"


def world_mask(mask: torch.Tensor) -> np.ndarray:
    """A [h, w] latent-cell mask as [32, 32] world pixels (each cell a square block)."""
    m = mask.bool().numpy()
    return m.repeat(SIZE // m.shape[0], 0).repeat(SIZE // m.shape[1], 1)


class SegmentBench(Bench):
    def run(self, source: str, target: str, seed: int, blend: dict | None = None, capture: dict | None = None):
        """(decoded [2, 32, 32, 3], captured attention) of one P2P run, blended with P2PLocalBlend(**blend),
        captured with P2PAttentionCapture(**capture) (None: P2PSampler's default capture)."""
        edit = self.pack.P2PEditSpec.execute(self.clip, source, target, mode="auto", **self.control)[0]
        if blend is not None:
            edit = self.pack.P2PLocalBlend.execute(edit, **{**node_defaults(self.pack.P2PLocalBlend), **blend})[0]
        captured = {} if capture is None else {"capture": self.pack.P2PAttentionCapture.execute(**capture)[0]}
        latent, attention = self.pack.P2PSampler.execute(self.model, edit, self.negative, seed, self.steps, self.cfg,
                                                          SAMPLER, SCHEDULER, 1.0, latent_image=self.latent,
                                                          **captured)[:2]
        return self._decode(latent), attention

    def segments(self, attention, words: str):
        """P2PAttentionSegments with its defaults: (masks [n_words, h, w], labels)."""
        node = self.pack.P2PAttentionSegments
        out = node.execute(**{**node_defaults(node), "attention": attention, "words": words})
        return out[1], out[3]


def measure(bench: SegmentBench, scenes: int, resolution: str | None = None) -> tuple[dict, int]:
    """Metric -> {SEGMENTS: values, ATTENTION: values}; and the number of scenes skipped (an object not drawn).
    `resolution`: P2PAttentionCapture's, for the capturing run (None: P2PSampler's default capture)."""
    node = bench.pack.P2PAttentionCapture
    capture = None if resolution is None else {**node_defaults(node), "resolution": resolution}
    scores: dict[str, dict[str, list[float]]] = {}

    def add(metric, side, value):
        scores.setdefault(metric, {SEGMENTS: [], ATTENTION: []})[side].append(value)

    skipped = 0
    for i in range(scenes):
        rng = random.Random(5000 + i)  # ShapesBench's local-blend scenes
        (c1, c2), (s1, s2) = rng.sample(list(COLORS), 2), rng.sample(SHAPES, 2)
        new = _other(rng, [c for c in COLORS if c != c2], c1)
        source_prompt = f"{_object(c1, s1)} on the left and {_object(c2, s2)} on the right"
        target_prompt = f"{_object(new, s1)} on the left and {_object(c2, s2)} on the right"
        seed = 5000 + i
        images, attention = bench.run(source_prompt, target_prompt, seed, capture=capture)
        source = images[0]
        truth = {s1: metrics.object_mask(source, c1), s2: metrics.object_mask(source, c2)}
        if min(metrics.area(m) for m in truth.values()) < MIN_OBJECT:
            skipped += 1
            continue
        masks, _ = bench.segments(attention, f"{s1}, {s2}")
        words_blend = {"source_words": f"{c1} {s1}", "target_words": f"{new} {s1}"}
        by_words, words_attention = bench.run(source_prompt, target_prompt, seed, blend=words_blend)
        by_segment, _ = bench.run(source_prompt, target_prompt, seed, blend={"mask": masks[:1]})
        threshold_mask = words_attention.maps.blend_masks[0]
        for word, mask in zip((s1, s2), masks, strict=True):
            add("object mask IoU", SEGMENTS, metrics.iou(world_mask(mask), truth[word]))
            # the cross-attention map of the word alone, at P2P Local Blend's threshold: no self-attention
            add("object mask IoU", ATTENTION, metrics.iou(world_mask(_threshold(attention, word, bench)), truth[word]))
        add("blend mask IoU (edited object)", SEGMENTS, metrics.iou(world_mask(masks[0]), truth[s1]))
        add("blend mask IoU (edited object)", ATTENTION, metrics.iou(world_mask(threshold_mask), truth[s1]))
        for side, edited in ((SEGMENTS, by_segment[1]), (ATTENTION, by_words[1])):
            add("PSNR untouched object (dB)", side, min(metrics.psnr(source, edited, truth[s2]), 100.0))
            add("target colour drawn", side, float(metrics.object_mask(edited, new)[truth[s1]].mean() >= 0.5))
    return scores, skipped


def _threshold(attention, word: str, bench: SegmentBench) -> torch.Tensor:
    """[h, w] bool: the word's source cross-attention, scaled to 0..1, above P2P Local Blend's threshold."""
    ((_, heat),) = word_maps(attention.maps, 0, [attention.split_words(word)])
    heat = heat / heat.max().clamp_min(1e-12)
    return heat > node_defaults(bench.pack.P2PLocalBlend)["threshold"]


def table(scores: dict) -> str:
    lines = [f"| metric | {SEGMENTS} (P2P Attention Segments) | {ATTENTION} (P2P Local Blend's words) | cases |",
             "|---|---|---|---|"]
    for metric, sides in scores.items():
        lines.append(f"| {metric} | {np.mean(sides[SEGMENTS]):.3f} | {np.mean(sides[ATTENTION]):.3f} | "
                     f"{len(sides[SEGMENTS])} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=50)
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--resolution", help="P2PAttentionCapture's resolution for the capture (default: none, "
                        "P2PSampler's default capture)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    started = time.perf_counter()
    bench = SegmentBench(args.steps, CFG)
    scores, skipped = measure(bench, args.scenes, args.resolution)
    print(f"\nSegmentBench: {args.scenes} scenes ({skipped} skipped: an object not drawn), {args.steps} steps "
          f"{SAMPLER}/{SCHEDULER}, cfg {CFG}, capture {args.resolution or 'default'}; machine: {describe()}; "
          f"{(time.perf_counter() - started) / 60:.1f} min\n")
    print(table(scores))


if __name__ == "__main__":
    main()
