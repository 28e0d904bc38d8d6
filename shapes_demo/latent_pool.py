"""A fixed pool of encoded scenes for training the latent demo model (v2).

Encoding a 64x64 picture costs more than the 8x8 UNet's training step on it (8 ms against 5 ms per picture
on 2 CPU cores), so v2 encodes a pool of scenes once and trains on batches drawn from it. Scene i is
`sample_scene(random.Random(scene_seed(i)))`, so a pool is rebuilt exactly from its size and the
autoencoder; it is cached on disk next to the run's checkpoint.

    pool = load_or_build(path, count, encode, autoencoder_state)
    latents, shares = pool.latents[rows], pool.shares[rows]   # [B, 4, 8, 8], [B, 3, 8, 8]
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import multiprocessing
import random
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .world import Scene, render, sample_scene

__all__ = ["LatentPool", "scene_seed", "pool_scene", "load_or_build"]

MAX_OBJECTS = 3
CHUNK = 256  # pictures encoded at a time


def scene_seed(i: int) -> int:
    return 9_000_011 * i + 5


def pool_scene(i: int) -> Scene:
    return sample_scene(random.Random(scene_seed(i)))


@dataclass(frozen=True)
class LatentPool:
    latents: torch.Tensor  # [N, C, h, w] float32: the encoder's latents
    shares: torch.Tensor  # [N, MAX_OBJECTS, h, w] float16: each object's share of each latent cell (0 if absent)

    def __len__(self) -> int:
        return self.latents.shape[0]


def rendered(i: int, picture_size: int, supersample: int, side: int) -> tuple[np.ndarray, np.ndarray]:
    """Scene i's picture [S, S, 3] in 0..1 and each object's share of each latent cell [MAX_OBJECTS, side, side]."""
    image, masks = render(pool_scene(i), supersample=supersample, size=picture_size)
    shares = np.zeros((MAX_OBJECTS, side, side), np.float16)
    cell = picture_size // side
    for j, mask in enumerate(masks):
        shares[j] = mask.reshape(side, cell, side, cell).mean(axis=(1, 3))
    return image, shares


def build(count: int, encode, picture_size: int, supersample: int, side: int, workers: int = 1) -> LatentPool:
    """Render and encode scenes 0..count-1; `encode` maps pictures [B, 3, S, S] in -1..1 to latents. `workers`
    processes render (the same pool whatever their number)."""
    latents, shares = [], []
    started = time.perf_counter()
    render_one = functools.partial(rendered, picture_size=picture_size, supersample=supersample, side=side)
    with contextlib.ExitStack() as stack:
        mapper = map
        if workers > 1:
            executor = stack.enter_context(ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")))
            mapper = functools.partial(executor.map, chunksize=16)
        for first in range(0, count, CHUNK):
            pictures, chunk_shares = zip(*mapper(render_one, range(first, min(first + CHUNK, count))), strict=True)
            x = torch.from_numpy(np.stack(pictures)).permute(0, 3, 1, 2) * 2 - 1
            latents.append(encode(x.contiguous()))
            shares.append(torch.from_numpy(np.stack(chunk_shares)))
            if (first // CHUNK) % 40 == 39:
                print(f"encoded {first + CHUNK} of {count} scenes ({(time.perf_counter() - started) / 60:.1f} min)",
                      flush=True)
    return LatentPool(torch.cat(latents), torch.cat(shares))


def load_or_build(path: Path, count: int, encode, autoencoder: dict, **render_args) -> LatentPool:
    """The pool cached at `path` if it was built from the same autoencoder weights and size, else a new one."""
    from safetensors.torch import save

    key = f"{count}:{hashlib.sha256(save(autoencoder)).hexdigest()}"
    if path.exists():
        cached = torch.load(path, weights_only=False)
        if cached.get("key") == key:
            return LatentPool(cached["latents"], cached["shares"])
    pool = build(count, encode, **render_args)
    torch.save({"key": key, "latents": pool.latents, "shares": pool.shares}, path)
    return pool
