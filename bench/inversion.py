"""Real-image inversion on the demo model: reconstruction, cost, and colour swaps of inverted scenes.

    .venv/bin/python -m bench.inversion [--scenes 10] [--steps 30] [--cfg 5]

The scenes are rendered by the shapes world (the model never generated them): one object, named in the
prompt by size, colour and shape. For each method of P2PInvert: the PSNR of the source item P2PSampler
regenerates against the input picture, the UNet passes per latent the inversion took (a backward pass
counts as one) and its seconds; then a colour swap of the object through P2PSampler: the IoU between the
input's object mask and the edit's target-colour mask, the rate of edits that took the colour, and the PSNR
outside the (dilated) object. Prints a markdown table with the machine described.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import numpy as np
import torch

from p2p.inversion import METHODS
from shapes_demo import metrics
from shapes_demo.world import COLORS, SHAPES, SIZE, SIZES, Obj, Scene, render, with_article

from .machine import describe


def scenes(count: int, picture_size: int = SIZE) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, str, str, str]]:
    """(image and object mask at 32x32, the picture given to the model at `picture_size`, source prompt, target
    prompt, target colour) per scene, fixed by its index."""
    out = []
    for i in range(count):
        rng = random.Random(7000 + i)
        color, shape, size = rng.choice(list(COLORS)), rng.choice(SHAPES), rng.choice(list(SIZES))
        target = rng.choice([c for c in COLORS if c != color])
        radius = rng.uniform(*SIZES[size])
        x, y = rng.uniform(radius + 1, 31 - radius), rng.uniform(radius + 1, 31 - radius)
        scene = Scene((Obj(shape, color, size, radius, x, y, None),), "white")
        image, (mask,) = render(scene)
        picture = image if picture_size == SIZE else render(scene, supersample=2, size=picture_size)[0]
        out.append((image, mask, picture, with_article(f"{size} {color} {shape}"),
                    with_article(f"{size} {target} {shape}"), target))
    return out


def measure(pack, model, clip, vae, negative, method: str, count: int, steps: int = 30,
            cfg: float = 5.0) -> dict[str, list[float]]:
    """Invert the first `count` scenes with `method` and swap their colour with P2P Edit Spec's defaults:
    per scene, metric -> value."""
    from .shapesbench import CONTROL, node_defaults

    control = {k: v for k, v in node_defaults(pack.P2PEditSpec).items() if k in CONTROL}
    # the model's picture size: its latent side times the VAE's downscale
    picture_size = model.model.model_config.unet_config["image_size"] * vae.spacial_compression_decode()
    stats: dict[str, list] = {k: [] for k in ("psnr", "passes", "seconds", "iou", "took", "outside")}
    for image, mask, picture, source, target, color in scenes(count, picture_size):
        with torch.inference_mode():
            started = time.perf_counter()
            inversion, _ = pack.P2PInvert.execute(model, vae, torch.from_numpy(picture)[None], negative, steps, cfg,
                                                   "normal", method, 10, 1e-5, 1e-2, clip=clip, source_prompt=source)
            seconds = time.perf_counter() - started
            edit = pack.P2PEditSpec.execute(clip, source, target, "auto", **control)[0]
            latent = pack.P2PSampler.execute(model, edit, negative, 0, steps, cfg, "euler", "normal", 1.0,
                                              inversion=inversion, capture=None)[0]
            out = metrics.to_world_pixels(vae.decode(latent["samples"]).float().numpy())
        everywhere = np.ones(mask.shape, bool)
        stats["psnr"].append(min(metrics.psnr(image, out[0], everywhere), 100.0))
        stats["passes"].append(inversion.passes)
        stats["seconds"].append(seconds)
        edited = metrics.object_mask(out[1], color)
        stats["iou"].append(metrics.iou(mask, edited))
        stats["took"].append(float(edited[mask].mean() >= 0.5))
        stats["outside"].append(min(metrics.psnr(image, out[1], ~metrics.dilate(mask, 2)), 100.0))
    return stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=10)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--cfg", type=float, default=5.0)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--weights", type=Path, help="demo-model weights to measure instead of the committed ones")
    args = parser.parse_args()
    torch.set_num_threads(2)

    from tools import host as host_module

    host_module.start(("--use-pytorch-cross-attention",))
    import nodes

    pack = host_module.pack_module().nodes
    if args.weights:
        from shapes_demo.model import load

        model, clip, vae = load(args.weights)
    else:
        model, clip, vae = pack.P2PDemoModel.execute()
    negative = nodes.CLIPTextEncode().encode(clip, "")[0]
    rows = []
    for method in args.methods.split(","):
        stats = measure(pack, model, clip, vae, negative, method, args.scenes, args.steps, args.cfg)
        rows.append((method, {k: float(np.mean(v)) for k, v in stats.items()}))

    print(f"\nInversion on the demo model: {args.scenes} rendered scenes, {args.steps} steps, cfg {args.cfg}, "
          f"euler/normal; machine: {describe()}\n")
    print("| method | reconstruction PSNR (dB) | UNet passes | seconds | colour-swap IoU | took the colour | "
          "PSNR outside the object (dB) |")
    print("|---|---|---|---|---|---|---|")
    for method, m in rows:
        print(f"| {method} | {m['psnr']:.1f} | {m['passes']:.0f} | {m['seconds']:.2f} | {m['iou']:.3f} | "
              f"{m['took']:.0%} | {m['outside']:.1f} |")


if __name__ == "__main__":
    main()
