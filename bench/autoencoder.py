"""A latent demo model's autoencoder: reconstruction, latent statistics, and how much colours share a place.

    .venv/bin/python -m bench.autoencoder [--model v3|v2] [--weights FILE] [--scenes 64]

Reconstruction PSNR of held-out scenes (pictures in -1..1, peak-to-peak 2); each latent channel's mean and
standard deviation; the coverage channel's error; and, per background, the cosine between the latents of
(object - empty background) for two colours drawn at the same place, over the 15 colour pairs: 1 means the
noise that favours one colour's object at a place favours any colour's there, which is what v2's latent
was trained for (v1's pixels: 0.66 / 0.61 / -0.12 on white / black / gray). Last, the colour swap through the
autoencoder alone: one-object scenes and the same scenes with the object in another colour, each encoded and
decoded, and the IoU of the two decoded objects in the world's pixels, as ShapesBench scores a colour swap: what
the autoencoder leaves of the best IoU a diffusion model's edit can reach.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import random
from pathlib import Path

import numpy as np
import torch

from .machine import describe


def main() -> None:
    from shapes_demo import metrics
    from shapes_demo.autoencoder import PRESENCE, SHAPES, build_autoencoder, scene_batch, stored_state
    from shapes_demo.world import BACKGROUNDS, COLORS, Obj, Scene, render, sample_scene

    from .shapesbench import SMALL_OBJECT

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=tuple(SHAPES), default="v3")
    parser.add_argument("--weights", type=Path,
                        help="an autoencoder file (default: the model's, from its own file or its model's weights)")
    parser.add_argument("--scenes", type=int, default=64)
    args = parser.parse_args()
    shape = SHAPES[args.model]
    from safetensors.torch import load_file

    state = load_file(str(args.weights)) if args.weights else stored_state(shape)
    if state is None:
        parser.error(f"no {args.model} autoencoder on disk: train it with "
                     f"`python -m shapes_demo.autoencoder --model {args.model}`")
    name = args.weights.name if args.weights else f"{args.model}'s"
    torch.set_num_threads(2)
    from tools.host import import_comfy

    import_comfy(("--use-pytorch-cross-attention",))

    model = build_autoencoder(state).eval()
    with torch.inference_mode():
        x, presence, _ = scene_batch(999_999, args.scenes, shape)  # seeds the training never drew
        z = model.taesd_encoder(x * 0.5 + 0.5)  # [B, 4, S/8, S/8]
        y = model.taesd_decoder(z) * 2 - 1
        psnr = 10 * np.log10(4 / ((y - x) ** 2).mean(dim=(1, 2, 3)).numpy())

        def latent(scene: Scene) -> torch.Tensor:
            image, _ = render(scene, supersample=2, size=shape.picture_size)
            return model.taesd_encoder(torch.from_numpy(image).permute(2, 0, 1)[None]).flatten()

        cosines = {}
        for background in BACKGROUNDS:
            empty = latent(Scene((Obj("circle", "red", "big", 1e-4, 16, 16, None),), background))
            pairs = []
            for first, second in itertools.combinations(COLORS, 2):
                a, b = (latent(Scene((Obj("circle", c, "big", 7, 16, 16, None),), background)) - empty
                        for c in (first, second))
                pairs.append(torch.nn.functional.cosine_similarity(a, b, dim=0).item())
            cosines[background] = pairs

        swap_ious: dict[bool, list[float]] = {True: [], False: []}  # source under SMALL_OBJECT px -> IoUs
        rng = random.Random(999_999)
        for _ in range(args.scenes):
            scene = sample_scene(rng, max_objects=1)
            source = dataclasses.replace(scene.objects[0], striped=False)
            edited = dataclasses.replace(source, color=rng.choice([c for c in COLORS if c != source.color]))
            pictures = np.stack([render(Scene((o,), scene.background), supersample=2, size=shape.picture_size)[0]
                                 for o in (source, edited)])  # [2, S, S, 3]
            decoded = model.taesd_decoder(model.taesd_encoder(torch.from_numpy(pictures).permute(0, 3, 1, 2)))
            world = metrics.to_world_pixels(decoded.clamp(0, 1).permute(0, 2, 3, 1).numpy())
            masks = [metrics.object_mask(image, o.color) for image, o in zip(world, (source, edited), strict=True)]
            swap_ious[metrics.area(masks[0]) < SMALL_OBJECT].append(metrics.iou(*masks))

    size = shape.picture_size
    print(f"\nAutoencoder {name}: {args.scenes} held-out scenes, {size}x{size}; machine: {describe()}\n")
    print(f"reconstruction PSNR: median {np.median(psnr):.1f} dB, worst {psnr.min():.1f} dB")
    means, stds = (" ".join(f"{v:.2f}" for v in t.tolist()) for t in (z.mean(dim=(0, 2, 3)), z.std(dim=(0, 2, 3))))
    print(f"latent channels: means {means}; standard deviations {stds}")
    print(f"coverage channel ({PRESENCE}) mean squared error: {((z[:, PRESENCE] - presence) ** 2).mean().item():.4f}\n")
    print("| background | colour-pair cosine, mean | lowest |")
    print("|---|---|---|")
    for background, pairs in cosines.items():
        print(f"| {background} | {np.mean(pairs):.2f} | {np.min(pairs):.2f} |")
    every = swap_ious[True] + swap_ious[False]
    print(f"\ncolour swap through the autoencoder alone, object IoU: {np.mean(every):.3f} ({len(every)} scenes); "
          f"objects under {SMALL_OBJECT} px {np.mean(swap_ious[True]):.3f} ({len(swap_ious[True])}), "
          f"of at least {SMALL_OBJECT} px {np.mean(swap_ious[False]):.3f} ({len(swap_ious[False])})")


if __name__ == "__main__":
    main()
