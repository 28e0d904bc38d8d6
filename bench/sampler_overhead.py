"""What Prompt-to-Prompt costs over a plain generation: time per step and peak memory.

    .venv/bin/python -m bench.sampler_overhead [--shape sd15-full] [--size 512] [--steps 3] [--edits 1]

Runs, in one ComfyUI process, on a random-weight model of the chosen shape (full-size SD1.5/SDXL UNets
by default, so the attention work is the real one):
  * the stock KSampler on one latent (a single generation),
  * the stock KSampler on a batch of 1+N latents (what P2P costs at best: the same batch),
  * P2PSampler with N edits (word swap, default windows): with attention capture off, with the default
    capture (the heatmaps' maps), and with local blend.
Prints a table with the machine described.
"""

from __future__ import annotations

import argparse
import threading
import time

import psutil
import torch

from .machine import describe


class PeakMemory:
    """Peak memory while a block runs, above what was in use when it started (MB): the device's
    allocations on CUDA, else the process's resident set sampled every 5 ms."""

    def __init__(self, device):
        self.device = device

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        else:
            self.process = psutil.Process()
            self.base = self.peak = self.process.memory_info().rss
            self.done = threading.Event()
            self.thread = threading.Thread(target=self._poll, daemon=True)
            self.thread.start()
        return self

    def _poll(self):
        while not self.done.wait(0.005):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.mb = (torch.cuda.max_memory_allocated(self.device) - self.base) / 2**20
        else:
            self.done.set()
            self.thread.join()
            self.mb = (self.peak - self.base) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", default="sd15-full")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--edits", type=int, default=1)
    parser.add_argument("--attention", default="pytorch", choices=["pytorch", "comfy-default"])
    args = parser.parse_args()

    from tools import host as host_module
    from tools.random_models import SHAPES, build_clip, build_model

    extra = ("--use-pytorch-cross-attention",) if args.attention == "pytorch" else ()
    h = host_module.start(extra)
    import comfy.model_management
    import nodes

    pack = host_module.pack_module()
    device = comfy.model_management.get_torch_device()
    shape = SHAPES[args.shape]
    model, clip = build_model(shape), build_clip(shape)
    positive = nodes.CLIPTextEncode().encode(clip, "a photo of a cat riding a bicycle")[0]
    negative = nodes.CLIPTextEncode().encode(clip, "")[0]
    bundle = pack.nodes.P2PEditSpec().build(clip, "a photo of a cat riding a bicycle",
                                            "a photo of a dog riding a bicycle", "auto", 0.8, 0.4, "coarse")[0]
    for i in range(1, args.edits):
        bundle = pack.nodes.P2PEditSpec().build(clip, "a photo of a cat riding a bicycle",
                                                f"a photo of a dog riding a bicycle {i}", "auto", 0.8, 0.4, "coarse",
                                                previous=bundle)[0]
    blended = pack.nodes.P2PLocalBlend().blend(bundle, "cat", "dog", 0.3, 0.2)[0]
    latent = {"samples": torch.zeros(1, 4, args.size // 8, args.size // 8)}
    batch = 1 + args.edits

    def stock(n):
        lat = {"samples": torch.zeros(n, 4, args.size // 8, args.size // 8), "batch_index": [0] * n}
        return lambda: nodes.common_ksampler(model, 1, args.steps, 7.5, "euler", "normal", positive, negative, lat)

    def p2p(edit, capture=pack.nodes.attention_nodes.DEFAULT_CAPTURE):
        return lambda: pack.nodes.P2PSampler().sample(model, edit, negative, 1, args.steps, 7.5, "euler", "normal",
                                                      1.0, latent_image=latent, capture=capture)

    runs = [("KSampler, 1 latent", stock(1)), (f"KSampler, {batch} latents", stock(batch)),
            (f"P2PSampler, {args.edits} edit(s), capture off", p2p(bundle, capture=None)),
            (f"P2PSampler, {args.edits} edit(s), default capture", p2p(bundle)),
            ("P2PSampler + local blend, default capture", p2p(blended))]
    stock(1)()  # warm-up: loads the model to the device
    rows = []
    for name, fn in runs:
        with torch.inference_mode(), PeakMemory(device) as memory:
            start = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            elapsed = time.perf_counter() - start
        rows.append((name, elapsed / args.steps, memory.mb))

    print(f"\nmachine: {describe(device)}, attention: {args.attention}")
    print(f"model: {args.shape} (random weights), {args.size}x{args.size} px, {args.steps} steps, cfg 7.5, euler\n")
    base = rows[1][1]
    print(f"| run | s/step | vs same batch | peak memory above idle (MB) |")
    print(f"|---|---|---|---|")
    for name, per_step, mem in rows:
        print(f"| {name} | {per_step:.3f} | {per_step / base:.2f}x | {mem:.0f} |")


if __name__ == "__main__":
    main()
