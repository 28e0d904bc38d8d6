"""Where the demo model puts an object: which part of the starting noise decides it.

    .venv/bin/python -m bench.noise_layout [--seeds 6]

For colour pairs whose palette colours are (nearly) a permutation of the RGB channels of each other
(red/blue, red/green, green/blue), each fixed seed draws `a <c1> <shape> on a <bg> background`, then the
same prompt with c2 from the same noise, and from the same noise with its channels permuted as c1 -> c2
permutes them. IoU of the two objects' masks; the control redraws c1 from the permuted noise. If the
permuted noise keeps the layout better than the same noise, the object is placed by the noise's colour,
so a colour swap from a fixed seed redraws the layout whatever attention control does. (The latent is the
picture, so permuting the noise's channels permutes its colours.)
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from shapes_demo import metrics
from shapes_demo.world import SHAPES

from .machine import describe
from .shapesbench import CFG, MIN_OBJECT, SAMPLER, SCHEDULER, STEPS, Bench

PAIRS = [("red", "blue", [2, 1, 0]), ("red", "green", [1, 0, 2]), ("green", "blue", [0, 2, 1])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=6)
    args = parser.parse_args()
    torch.set_num_threads(2)
    started = time.perf_counter()
    bench = Bench()
    import comfy.sample

    def draw(prompt: str, noise: torch.Tensor) -> np.ndarray:
        positive = bench.nodes.CLIPTextEncode().encode(bench.clip, prompt)[0]
        samples = comfy.sample.sample(bench.model, noise, STEPS, CFG, SAMPLER, SCHEDULER, positive, bench.negative,
                                      bench.latent["samples"], disable_pbar=True, seed=0)
        return bench.vae.decode(samples).numpy()[0]

    columns = ("same noise", "channel-permuted noise", "control: c1 again, permuted noise")
    rows = []
    for background in ("white", "black"):
        scores = {c: [] for c in columns}
        for c1, c2, permutation in PAIRS:
            for seed in range(args.seeds):
                noise = comfy.sample.prepare_noise(bench.latent["samples"], 100 + seed)
                permuted = noise[:, permutation]
                shape = SHAPES[seed % len(SHAPES)]
                first = metrics.object_mask(draw(f"a {c1} {shape} on a {background} background", noise), c1)
                if metrics.area(first) < MIN_OBJECT:
                    continue
                for column, colour, start in zip(columns, (c2, c2, c1), (noise, permuted, permuted), strict=True):
                    image = draw(f"a {colour} {shape} on a {background} background", start)
                    scores[column].append(metrics.iou(first, metrics.object_mask(image, colour)))
        rows.append(f"| {background} | " + " | ".join(f"{np.mean(scores[c]):.3f}" for c in columns)
                    + f" | {len(scores[columns[0]])} |")
    print(f"\nObject IoU with the first drawing, {args.seeds} seeds x 3 colour pairs per background, {STEPS} steps "
          f"{SAMPLER}/{SCHEDULER}, cfg {CFG}; machine: {describe()}; {(time.perf_counter() - started) / 60:.1f} min\n")
    print("| background | " + " | ".join(columns) + " | cases |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
