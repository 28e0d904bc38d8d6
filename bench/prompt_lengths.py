"""What prompts of different lengths cost in one P2P batch: time and peak memory.

    .venv/bin/python -m bench.prompt_lengths [--shape sd15] [--size 256] [--steps 4] [--rounds 3]

Three prompts of 7, 11 and 13 chunks (77 tokens each, coprime counts) against three prompts of 13 chunks
(the equal-length case, as long as the longest), and, for the record, the same 7/11/13 batch built the way
the pack did before issue #18: every prompt repeated to the chunk counts' least common multiple (1001
chunks, 77,077 tokens). Rounds interleave the configurations after an uncounted warm-up; each is run
once timed and once with its memory recorded; medians printed.
Target (issue #18): 7/11/13 within 1.5x of the equal-length case in time and memory.
"""

from __future__ import annotations

import argparse
import math
import shlex
import statistics
import sys
import time

import torch

from .machine import describe
from .sampler_overhead import PeakMemory

FILLER = "a tiny dot in the corner"  # 6 tokens with its comma


def prompt_of_chunks(base: str, chunks: int) -> str:
    words = base
    while len(words.split()) + 2 <= 75 * (chunks - 1) + 10:
        words += f", {FILLER}"
    return words


def lcm_positive(self, extras=None):
    """The pack's conditioning before issue #18: every prompt repeated to the lengths' common multiple."""
    firsts = [c[0] for c in self.conditionings]
    length = math.lcm(*(t.shape[1] for t, _ in firsts))
    return [[torch.cat([t.repeat(1, length // t.shape[1], 1) for t, _ in firsts]), dict(firsts[0][1])]]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", default="sd15")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-lcm", action="store_true", help="leave out the slow pre-#18 configuration")
    args = parser.parse_args()
    print("$ .venv/bin/python -m bench.prompt_lengths " + shlex.join(sys.argv[1:]), flush=True)

    from tools import host as host_module
    from tools.random_models import build_clip, build_model

    host_module.start()
    import comfy.model_management
    import nodes

    pack = host_module.pack_module()
    device = comfy.model_management.get_torch_device()
    model, clip = build_model(args.shape), build_clip(args.shape)
    negative = nodes.CLIPTextEncode().encode(clip, "")[0]
    base = "a red circle on the left and a small square"

    def bundle(chunks):
        source = prompt_of_chunks(base, chunks[0])
        edit = None
        for i, n in enumerate(chunks[1:]):
            target = prompt_of_chunks(base.replace("red", ("blue", "green")[i % 2]), n)
            edit = pack.nodes.P2PEditSpec.execute(clip, source, target, "refine", 0.8, 0.4, "coarse",
                                                  previous=edit)[0]
        return edit

    latent = {"samples": torch.zeros(1, 4, args.size // 8, args.size // 8)}
    equal, coprime = bundle((13, 13, 13)), bundle((7, 11, 13))
    original = pack.adapter.bundle.EditBundle.positive

    def run(edit, conditioning=original):
        def go():
            pack.adapter.bundle.EditBundle.positive = conditioning
            try:
                pack.nodes.P2PSampler.execute(model, edit, negative, 1, args.steps, 7.5, "euler", "normal", 1.0,
                                               latent_image=latent, capture=None)
            finally:
                pack.adapter.bundle.EditBundle.positive = original
        return go

    configs = [("3 prompts of 13 chunks (equal length)", run(equal)), ("7, 11 and 13 chunks", run(coprime))]
    if not args.skip_lcm:
        configs.append(("7, 11 and 13 chunks, repeated to their lcm (before #18)", run(coprime, lcm_positive)))
    with torch.inference_mode():
        configs[0][1]()  # warm-up: loads the model, not counted
        times = {name: [] for name, _ in configs}
        memory = {name: [] for name, _ in configs}
        for _ in range(args.rounds):
            for name, fn in configs:
                start = time.perf_counter()  # timed on its own: the CPU memory record slows small ops down
                fn()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times[name].append((time.perf_counter() - start) / args.steps)
                with PeakMemory(device) as peak:
                    fn()
                memory[name].append(peak.mb)

    print(f"\nmachine: {describe(device)}")
    print(f"model: {args.shape} (random weights), {args.size}x{args.size} px, {args.steps} steps, euler, cfg 7.5, "
          f"capture off; {args.rounds} interleaved rounds, medians\npeak memory: {PeakMemory.how(device)}\n")
    ref_t, ref_m = statistics.median(times[configs[0][0]]), statistics.median(memory[configs[0][0]])
    print("| prompts | s/step | vs equal length | peak tensor memory (MB) | vs equal length |")
    print("|---|---|---|---|---|")
    for name, _ in configs:
        t, m = statistics.median(times[name]), statistics.median(memory[name])
        print(f"| {name} | {t:.3f} | {t / ref_t:.2f}x | {m:.0f} | {m / max(ref_m, 1e-9):.2f}x |")


if __name__ == "__main__":
    main()
