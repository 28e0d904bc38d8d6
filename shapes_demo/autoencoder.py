"""The latent demo models' autoencoders: ComfyUI's TAESD architecture; v2: 64x64 pictures to 8x8x4 latents,
v3: 128x128 pictures to 16x16x4 latents.

Why a latent: in pixel space the starting noise has a colour at every pixel, and the model places an object
where the noise leans to the object's colour, so an edited colour is drawn elsewhere whatever the attention
maps say (MODEL.md, "Where it misses"). Here channel `PRESENCE` of the latent is trained to carry the
object's coverage of each latent cell, the same for every colour, so that what places an object in the noise
is shared by all colours; the other channels are free (colour, shape, background). Every channel is
trained to zero mean and unit variance over the world, so the diffusion model needs no latent scaling.

ComfyUI loads the result natively (`comfy.sd.VAE` recognises TAESD by its keys), so VAE Encode / Decode
and P2P Invert run unchanged.

    .venv/bin/python -m shapes_demo.autoencoder [--model v2|v3] [--steps N] [--batch 16] [--out FILE]
        [--init-from FILE]

v3's is v2's fine-tuned at twice the picture size (the same layers see the world at twice the scale), so it
starts from v2's, and trains v2's first (its recipe) when it is not on disk.

Each demo model's weights file carries its autoencoder ("vae." keys), so only that file is committed; an
autoencoder is read from its own file (what this script writes) when there is one, else from its model's
file (`stored_state`).
"""

from __future__ import annotations

import argparse
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .model import V2_WEIGHTS, WEIGHTS, split_state
from .prerequisites import found_or_trained
from .world import render, sample_scene

__all__ = ["AutoencoderShape", "SHAPES", "PICTURE_SIZE", "LATENT_SIZE", "LATENT_CHANNELS", "PRESENCE",
           "build_autoencoder", "stored_state", "presence_target", "scene_batch"]

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


@dataclass(frozen=True)
class AutoencoderShape:
    """One latent demo model's pictures and latents; TAESD downsamples 8x."""

    picture_size: int
    file: Path  # where this script writes it
    model_file: Path  # the demo model's weights, which carry it under "vae." keys
    # The world's mean and spread of a latent cell's object coverage (measured over 1024 scenes; see
    # `presence_target`): the presence channel is the standardised coverage, like the other channels.
    coverage_mean: float
    coverage_std: float
    steps: int  # training steps of its recipe
    lr: float  # the peak learning rate
    start: str | None = None  # fine-tuned from this model's autoencoder

    @property
    def latent_size(self) -> int:
        return self.picture_size // 8


V2 = AutoencoderShape(64, WEIGHTS_DIR / "p2p_shapes_demo_v2_vae.safetensors", V2_WEIGHTS, 0.10, 0.25, steps=2000,
                      lr=1e-3)
# fine-tuning: at v2's 1e-3 the reconstruction fell from 30 to 25 dB in the first 150 steps
V3 = AutoencoderShape(128, WEIGHTS_DIR / "p2p_shapes_demo_v3_vae.safetensors", WEIGHTS, 0.10, 0.27, steps=600,
                      lr=2e-4, start="v2")
SHAPES = {"v2": V2, "v3": V3}
# the committed model's (P2P Demo Model's): v3
PICTURE_SIZE, LATENT_SIZE = V3.picture_size, V3.latent_size
LATENT_CHANNELS = 4
PRESENCE = 0  # the latent channel that carries object coverage
SUPERSAMPLE = 2  # 2x2 samples per pixel


def build_autoencoder(state: dict | None = None):
    """ComfyUI's TAESD module (encoder, decoder, scale and shift), weights from `state` if given."""
    import comfy.taesd.taesd

    model = comfy.taesd.taesd.TAESD(latent_channels=LATENT_CHANNELS)
    if state is not None:
        model.load_state_dict(state)
    return model


def presence_target(masks: list[np.ndarray], shape: AutoencoderShape = V2) -> np.ndarray:
    """[side, side] standardised coverage of each latent cell by any object; masks [S, S] bool each."""
    union = np.logical_or.reduce(masks)
    side = shape.latent_size
    pool = union.shape[0] // side
    cover = union.reshape(side, pool, side, pool).mean(axis=(1, 3))
    return ((cover - shape.coverage_mean) / shape.coverage_std).astype(np.float32)


def scene_batch(seed: int, size: int, shape: AutoencoderShape = V2) -> tuple[torch.Tensor, torch.Tensor, list]:
    """pictures [B, 3, S, S] in -1..1, presence targets [B, S/8, S/8], and each row's (scene, masks)."""
    rng = random.Random(seed)
    images, targets, truth = [], [], []
    for _ in range(size):
        scene = sample_scene(rng)
        image, masks = render(scene, supersample=SUPERSAMPLE, size=shape.picture_size)
        images.append(image)
        targets.append(presence_target(masks, shape))
        truth.append((scene, masks))
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2) * 2 - 1
    return x.contiguous(), torch.from_numpy(np.stack(targets)), truth


def _init(module: torch.nn.Module, seed: int) -> None:
    torch.manual_seed(seed)
    for m in module.modules():  # ComfyUI's layers skip initialisation
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5))
            if m.bias is not None:
                fan_in = m.weight[0].numel()
                torch.nn.init.uniform_(m.bias, -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))


def stored_state(shape: AutoencoderShape) -> dict | None:
    """The autoencoder's weights from its own file, else from its model's file; None when neither is on disk."""
    from safetensors.torch import load_file

    if shape.file.is_file():
        return load_file(str(shape.file))
    if shape.model_file.is_file():
        return split_state(load_file(str(shape.model_file)), ("vae",))[0] or None
    return None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=tuple(SHAPES), default="v2")
    parser.add_argument("--steps", type=int, help="default: the model's recipe")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, help="default: the model's recipe")
    parser.add_argument("--presence-weight", type=float, default=0.2)
    parser.add_argument("--moment-weight", type=float, default=0.05)
    parser.add_argument("--latent-noise", type=float, default=0.05,
                        help="std of noise added to latents before decoding: the decoder must accept the "
                             "diffusion model's slightly-off latents")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--init-from", type=Path, help="fine-tune these weights (default: the model's recipe)")
    args = parser.parse_args(argv)
    shape = SHAPES[args.model]
    args.steps = args.steps or shape.steps
    args.lr = args.lr or shape.lr
    args.out = args.out or shape.file
    start = None  # the weights a fine-tune starts from
    if args.init_from is not None:
        if not args.init_from.is_file():
            parser.error(f"--init-from: no file at {args.init_from}")
        from safetensors.torch import load_file

        start = load_file(str(args.init_from))
    elif (base := shape.start) is not None:
        start = found_or_trained(f"{base} autoencoder", lambda: stored_state(SHAPES[base]),
                                 lambda: main(["--model", base, "--threads", str(args.threads)]))

    torch.set_num_threads(args.threads)
    from tools.host import import_comfy

    import_comfy(("--use-pytorch-cross-attention",))  # as shapes_demo.train, which may call this in its process
    from safetensors.torch import save_file

    from .train import native_bf16

    bf16 = native_bf16()
    if start is not None:
        model = build_autoencoder(start)
    else:
        model = build_autoencoder()
        _init(model, seed=0)
    encoder, decoder = model.taesd_encoder, model.taesd_decoder
    params = list(encoder.parameters()) + list(decoder.parameters())
    optimizer = torch.optim.Adam(params, lr=args.lr)
    warmup = 100

    def lr_factor(s: int) -> float:
        return min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, args.steps) / args.steps))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    checkpoint = args.out.with_suffix(".resume.pt")
    first = 0
    if checkpoint.exists():
        state = torch.load(checkpoint, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        first = state["step"]
        print(f"resuming at step {first}")
    gen = torch.Generator().manual_seed(3)
    started, logs = time.perf_counter(), []
    for step in range(first, args.steps):
        x, presence, _ = scene_batch(7_000_003 * step + 11, args.batch, shape)
        gen.manual_seed(step)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            z = encoder(x * 0.5 + 0.5).float()  # [B, 4, S/8, S/8]; TAESD's encoder takes 0..1
            noisy = z + args.latent_noise * torch.randn(z.shape, generator=gen)
            y = decoder(noisy).float() * 2 - 1  # [B, 3, S, S]
        reconstruction = ((y - x) ** 2).mean()
        presence_error = ((z[:, PRESENCE] - presence) ** 2).mean()
        free = torch.cat([z[:, :PRESENCE], z[:, PRESENCE + 1:]], 1)  # [B, 3, S/8, S/8]
        mean, std = free.mean(dim=(0, 2, 3)), free.std(dim=(0, 2, 3))
        moments = (mean ** 2).mean() + ((std - 1) ** 2).mean()
        loss = reconstruction + args.presence_weight * presence_error + args.moment_weight * moments
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        logs.append((reconstruction.item(), presence_error.item(), moments.item()))
        if (step + 1) % 50 == 0:
            rec, pres, mom = np.mean(logs[-50:], axis=0)
            elapsed = time.perf_counter() - started
            print(f"step {step + 1:5d}  reconstruction {rec:.5f} ({10 * math.log10(4 / max(rec, 1e-10)):.1f} dB)  "
                  f"presence {pres:.4f}  moments {mom:.4f}  {elapsed / 60:.1f} min  "
                  f"{elapsed / (step + 1 - first):.2f} s/step", flush=True)
        if (step + 1) % 250 == 0 or step + 1 == args.steps:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "schedule": schedule.state_dict(), "step": step + 1}, checkpoint)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(args.out), metadata={"steps": str(args.steps), "batch": str(args.batch), "model": args.model})
    print(f"saved {args.out} ({args.out.stat().st_size / 2**20:.1f} MB) after "
          f"{(time.perf_counter() - started) / 60:.1f} min")


if __name__ == "__main__":
    main()
