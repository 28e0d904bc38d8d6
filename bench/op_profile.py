"""Where Prompt-to-Prompt's time goes: torch operator totals of the stock KSampler and of P2PSampler.

    .venv/bin/python -m bench.op_profile [--shape sdxl-full] [--size 512] [--steps 2] [--rounds 2] [--top 20]

Both runs do the same work (the stock run on 2 latents sharing one noise, P2P with 1 edit and capture
off; positive and negative in separate UNet calls for both), on a random-weight model of the chosen
shape, after one uncounted step of each. Each round profiles both, alternating; printed: each run's time,
then, from the last round, the operators whose self CPU time differs most between the two (torch.profiler).
The operators only P2P calls (bmm and softmax for the explicit cross-attention maps, the mixing's mul and
add) show what editing adds.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time

import torch

from .machine import describe
from .sampler_overhead import build_runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="sdxl-full")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    print("$ .venv/bin/python -m bench.op_profile " + shlex.join(sys.argv[1:]), flush=True)
    if args.threads:
        torch.set_num_threads(args.threads)

    _, _, stock, p2p_with, _ = build_runs(args.shape, args.size, edits=1, split=True)
    p2p = p2p_with(None)
    configs = {"KSampler, 2 latents": stock, "P2PSampler, 1 edit, capture off": p2p}
    totals: dict[str, dict[str, tuple[float, int]]] = {}
    with torch.inference_mode():
        for fn in configs.values():
            fn(1)  # uncounted: model load and first-run costs
        for r in range(args.rounds):
            for name in list(configs)[r % 2:] + list(configs)[:r % 2]:
                with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                    start = time.perf_counter()
                    configs[name](args.steps)
                    elapsed = time.perf_counter() - start
                print(f"round {r + 1}: {name}: {elapsed / args.steps:.2f} s/step", flush=True)
                totals[name] = {e.key: (e.self_cpu_time_total / 1e6, e.count) for e in prof.key_averages()}

    stock_ops, p2p_ops = totals.values()
    print(f"\nmachine: {describe()}\nmodel: {args.shape} (random weights), {args.size}x{args.size} px, "
          f"{args.steps} steps, euler, cfg 7.5; operators of the last round, by the difference in self CPU time\n")
    print("| operator | stock s | stock calls | P2P s | P2P calls | P2P - stock s |")
    print("|---|---|---|---|---|---|")
    keys = sorted(set(stock_ops) | set(p2p_ops),
                  key=lambda k: -abs(p2p_ops.get(k, (0, 0))[0] - stock_ops.get(k, (0, 0))[0]))
    for key in keys[: args.top]:
        (s, sn), (p, pn) = stock_ops.get(key, (0.0, 0)), p2p_ops.get(key, (0.0, 0))
        print(f"| {key} | {s:.2f} | {sn} | {p:.2f} | {pn} | {p - s:+.2f} |")
    print(f"| all | {sum(v for v, _ in stock_ops.values()):.2f} | | {sum(v for v, _ in p2p_ops.values()):.2f} | | |")


if __name__ == "__main__":
    main()
