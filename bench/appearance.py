"""AppearanceBench: P2P Appearance Transfer on the demo model, against the same run without the swap.

    .venv/bin/python -m bench.appearance [--scenes 20] [--steps 30] [--cfg 5] [--weights FILE]

Each scene is a pair of pictures the shapes world renders (the model never generated them) showing the same
shape: the structure picture (one colour, one place and size, on white) and the appearance picture (another
colour, elsewhere, on white). Both are inverted with P2PInvert (its default method) under the neutral prompt
`a <shape>`, and P2PAppearanceTransfer samples the output with that prompt. Measured in the world's 32x32
pixels: the IoU of the output's object (every pixel not classified as background) with the structure picture's
exact object mask (layout kept), and the share of those mask pixels drawn in the appearance colour (look taken).
Columns: the node's defaults; without swap guidance; without AdaIN; without the attention swap (AdaIN
alone); neither (the structure's inverted noise regenerated: the no-attention baseline); and masked AdaIN (the
paper's default), given the two pictures' exact object masks, with and without swap guidance. Prints a markdown
table with the machine described.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import numpy as np
import torch

from shapes_demo import metrics
from shapes_demo.world import COLORS, SHAPES, SIZES, Obj, Scene, render, with_article

from .machine import describe
from .shapesbench import CFG, STEPS, Bench, node_defaults

MASKED = "masked"  # a run given the two pictures' object masks (structure_mask, appearance_mask)
RUNS = {  # P2PAppearanceTransfer's inputs over its defaults
    "default": {},
    "no swap guidance": {"swap_guidance": 1.0},
    "no AdaIN": {"adain_start": 1.0},
    "AdaIN alone (no swap)": {"start": 0.0, "end": 0.0, "end_half": 0.0},
    "neither (baseline)": {"start": 0.0, "end": 0.0, "end_half": 0.0, "adain_start": 1.0},
    "masked AdaIN": {MASKED: True},
    "masked AdaIN, no swap guidance": {MASKED: True, "swap_guidance": 1.0},
}


def scene_pair(i: int) -> tuple[str, str, str, Scene, Scene]:
    """Scene pair i: the shape, the structure's and the appearance's colours, and the two scenes."""
    rng = random.Random(11000 + i)
    shape = rng.choice(SHAPES)
    structure_color, appearance_color = rng.sample(list(COLORS), 2)

    def obj(color: str) -> Obj:
        size = rng.choice(list(SIZES))
        radius = rng.uniform(*SIZES[size])
        return Obj(shape, color, size, radius, rng.uniform(radius + 1, 31 - radius),
                   rng.uniform(radius + 1, 31 - radius), None)

    return (shape, structure_color, appearance_color, Scene((obj(structure_color),), "white"),
            Scene((obj(appearance_color),), "white"))


class AppearanceBench(Bench):
    def invert(self, scene: Scene, prompt: str, picture_size: int):
        picture = render(scene, supersample=2, size=picture_size)[0]
        return self.pack.P2PInvert.execute(self.model, self.vae, torch.from_numpy(picture)[None], self.negative,
                                           self.steps, self.cfg, "normal", **self._invert_defaults(), clip=self.clip,
                                           source_prompt=prompt)[0]

    def _invert_defaults(self) -> dict:
        defaults = node_defaults(self.pack.P2PInvert)
        return {name: defaults[name] for name in ("method", "inner_steps", "early_stop", "learning_rate")}

    def transfer(self, structure, appearance, prompt: str, changes: dict) -> np.ndarray:
        """The output, decoded to the world's pixels [32, 32, 3]."""
        node = self.pack.P2PAppearanceTransfer
        positive = self.nodes.CLIPTextEncode().encode(self.clip, prompt)[0]
        inputs = {**node_defaults(node), **changes}
        latent = node.execute(model=self.model, structure=structure, appearance=appearance, positive=positive,
                              negative=self.negative, **inputs)[0]
        return self._decode(latent)[0]


def measure(bench: AppearanceBench, scenes: int) -> dict[str, dict[str, list[float]]]:
    picture_size = bench.model.model.model_config.unet_config["image_size"] * bench.vae.spacial_compression_decode()
    scores: dict[str, dict[str, list[float]]] = {name: {} for name in RUNS}
    for i in range(scenes):
        shape, _, appearance_color, structure_scene, appearance_scene = scene_pair(i)
        prompt = with_article(shape)
        with torch.inference_mode():
            structure = bench.invert(structure_scene, prompt, picture_size)
            appearance = bench.invert(appearance_scene, prompt, picture_size)
        _, (mask,) = render(structure_scene)
        object_masks = {f"{name}_mask": torch.from_numpy(render(scene, size=picture_size)[1][0]).float()[None]
                        for name, scene in (("structure", structure_scene), ("appearance", appearance_scene))}
        for name, changes in RUNS.items():
            inputs = {k: v for k, v in changes.items() if k != MASKED} | (object_masks if MASKED in changes else {})
            with torch.inference_mode():
                out = bench.transfer(structure, appearance, prompt, inputs)
            foreground = ~np.char.startswith(metrics.classify(out).astype(str), "background:")
            row = scores[name]
            row.setdefault("layout: object IoU with the structure's", []).append(metrics.iou(foreground, mask))
            row.setdefault("look: structure's object pixels in the appearance colour", []).append(
                float(metrics.color_mask(out, appearance_color)[mask].mean()))
    return scores


def table(scores: dict) -> str:
    names = list(scores)
    lines = ["| metric | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for metric in scores[names[0]]:
        lines.append(f"| {metric} | " + " | ".join(f"{np.mean(scores[n][metric]):.3f}" for n in names) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=20)
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--cfg", type=float, default=CFG)
    parser.add_argument("--weights", type=Path, help="demo-model weights to measure instead of the committed ones")
    args = parser.parse_args()
    torch.set_num_threads(2)
    started = time.perf_counter()
    bench = AppearanceBench(args.steps, args.cfg, weights=args.weights)
    scores = measure(bench, args.scenes)
    print(f"\nAppearanceBench: {args.scenes} scene pairs, {args.steps} steps, cfg {args.cfg}, inverted with "
          f"P2PInvert's "
          f"default method; machine: {describe()}; {(time.perf_counter() - started) / 60:.1f} min\n")
    print(table(scores))


if __name__ == "__main__":
    main()
