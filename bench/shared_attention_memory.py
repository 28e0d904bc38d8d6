"""Peak memory and time of one StyleAligned self-attention call at SDXL's sizes, against the stock call and
against the paper's materialised map (issue #22: "memory stays bounded at SDXL 1024 px").

    .venv/bin/python -m bench.shared_attention_memory [--size 1024] [--items 4] [--rounds 3] [--device cuda]
        [--no-materialised]

One layer call of SDXL's finest self-attention level (at 1024 px: a 128x128 latent, its first transformer
level at 64x64 = 4096 tokens, 640 channels, 10 heads), a batch of `--items` items in two conditioning chunks
(positive and negative), random projections. Four ways to compute it:
  * stock: the host's attention over the batch (PyTorch's scaled_dot_product_attention, as ComfyUI's
    `--use-pytorch-cross-attention`);
  * shared, weight 1 / weight 2: what P2P Style Aligned's patch computes (the stock call, then each sharing
    row's AdaIN and shared attention, `p2p.shared_attention.shared_rows`), at the default reference_weight and at
    2 (the merged path);
  * materialised: the paper's formulation, the [rows, heads, N, 2N] score map in memory (a reference for the
    memory it would take; skipped with --no-materialised or where it would not fit).
Each is timed and its peak tensor memory measured (`bench.sampler_overhead.PeakMemory`), rounds interleaved,
medians printed.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

from p2p.shared_attention import SharedAttentionSpec, adain, shared_rows, sharing_rows

from .machine import describe
from .sampler_overhead import PeakMemory

CHANNELS, HEADS = 640, 10  # SDXL's first transformer level


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int = HEADS) -> torch.Tensor:
    """[R, N, C] attention as ComfyUI's PyTorch backend computes it."""
    r, n, c = q.shape
    q, k, v = (t.reshape(r, -1, heads, c // heads).transpose(1, 2) for t in (q, k, v))
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    return out.transpose(1, 2).reshape(r, n, c)


def materialised(q, k, v, pairs, spec: SharedAttentionSpec) -> torch.Tensor:
    """The paper's shared attention with the score map in memory: [S, N, C]."""
    rows, refs = [r for r, _ in pairs], [r for _, r in pairs]
    qs, ks = adain(q[rows], q[refs]), adain(k[rows], k[refs])
    s, n, c = qs.shape
    d = c // HEADS

    def split(x):
        return x.reshape(x.shape[0], x.shape[1], HEADS, d).transpose(1, 2)

    keys = split(torch.cat([ks, k[refs] * spec.key_scale], dim=1))  # [S, H, 2N, d]
    scores = split(qs) @ keys.transpose(-1, -2) / math.sqrt(d)  # [S, H, N, 2N]
    scores[..., n:] += math.log(spec.reference_weight)
    out = scores.softmax(dim=-1) @ split(torch.cat([v[rows], v[refs]], dim=1))
    return out.transpose(1, 2).reshape(s, n, c)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024, help="picture size in pixels (SDXL: latent = size / 8)")
    parser.add_argument("--items", type=int, default=4, help="batch items; item 0 is the reference")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-materialised", action="store_true", help="skip the paper's materialised map")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    tokens = (args.size // 8 // 2) ** 2  # the first transformer level is at half the latent's side
    batch = 2 * args.items  # positive and negative chunks
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(batch, tokens, CHANNELS, generator=gen).to(device, dtype) for _ in range(3))
    pairs = sharing_rows(2, args.items, None)

    def with_stock(spec):
        def run():
            out = attend(q, k, v).clone()
            out[[r for r, _ in pairs]] = shared_rows(q, k, v, pairs, HEADS, spec, attend)
            return out
        return run

    runs = {"stock": lambda: attend(q, k, v),
            "shared, weight 1 (default)": with_stock(SharedAttentionSpec()),
            "shared, weight 2": with_stock(SharedAttentionSpec(reference_weight=2.0))}
    map_bytes = len(pairs) * HEADS * tokens * 2 * tokens * torch.finfo(dtype).bits // 8
    free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else None
    if not args.no_materialised and (free is None or 3 * map_bytes < free):
        runs["materialised (the paper's)"] = lambda: materialised(q, k, v, pairs, SharedAttentionSpec(
            reference_weight=2.0))

    print(f"machine: {describe(device)}")
    print(f"one self-attention call: {batch} rows ({args.items} items x 2 chunks, {len(pairs)} sharing), "
          f"{tokens} tokens, {CHANNELS} channels, {HEADS} heads, {dtype}; SDXL at {args.size} px")
    print(f"peak memory: {PeakMemory.how(device)}")
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
    for run in runs.values():  # warm-up, not counted
        run()
    for round_ in range(args.rounds):
        names = list(runs)
        names = names[round_ % len(names):] + names[: round_ % len(names)]  # rotated each round
        for name in names:
            with PeakMemory(device) as peak:
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                started = time.perf_counter()
                out = runs[name]()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                seconds = time.perf_counter() - started
            del out
            assert peak.mb is not None
            results[name].append((seconds, peak.mb))
            print(f"round {round_ + 1}: {name}: {seconds * 1000:.1f} ms, peak tensors {peak.mb:.0f} MB", flush=True)

    stock_ms = statistics.median(s for s, _ in results["stock"]) * 1000
    stock_mb = statistics.median(m for _, m in results["stock"])
    print(f"\n{args.rounds} rounds, configurations rotated each round; medians\n")
    print("| call | ms | vs stock | peak tensor MB | vs stock |")
    print("|---|---|---|---|---|")
    for name, values in results.items():
        ms = statistics.median(s for s, _ in values) * 1000
        mb = statistics.median(m for _, m in values)
        print(f"| {name} | {ms:.1f} | {ms / stock_ms:.2f}x | {mb:.0f} | {mb / stock_mb:.2f}x |")
    print(f"\nthe score map alone, [{len(pairs)}, {HEADS}, {tokens}, {2 * tokens}] in {dtype}: "
          f"{map_bytes / 2**20:.0f} MB")


if __name__ == "__main__":
    main()
