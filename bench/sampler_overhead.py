"""What Prompt-to-Prompt costs over a plain generation of the same batch: time per step and peak memory.

    .venv/bin/python -m bench.sampler_overhead [--shape sd15-full] [--size 512] [--steps 2] [--rounds 3]
        [--threads N] [--cond-batch auto|split]

On a random-weight model of the chosen shape (full-size SD1.5/SDXL UNets, or Flux/SD3 blocks at full width:
`flux-blocks`, `sd3-blocks`; the attention work is the real one), in one ComfyUI process, three configurations
doing the same work:
  * the stock KSampler on a batch of 1+N latents sharing one noise (the work P2P does: the same batch),
  * P2PSampler with N edits (word swap, default windows) and attention capture off,
  * the same with the default capture (the heatmaps' maps).
A window covers the whole steps below its fraction (floor(fraction x steps)): at --steps 2 the default
self_replace (0.4) covers none, so use 5 steps (cross_replace 4, self_replace 2) to measure both injections.
An uncounted warm-up run comes first (1 step of the stock run: the first run at a batch shape pays one-off
costs, kernel set-up and first touch of memory, that would otherwise land on whichever configuration ran
first), then `--rounds` rounds, the configurations in a rotated order each round. Printed: every run as it
ends, then a markdown table of medians with their spread and each configuration's ratio to the stock run of
the same round (median over rounds), with the UNet calls and their rows counted by a forward hook (the check
that every configuration does the same model work), and the verdict on the targets of issue #18: P2P within
1.10x of the stock time and peak memory with capture off, 1.15x with the default capture.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import os
import shlex
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from .machine import describe

ONLY = ("stock", "capture-off", "default-capture")  # --only's names for the configurations, in their order
TARGETS = {"capture off": 1.10, "default capture": 1.15}  # issue #18: at most this many times the stock run
# (cfg, scheduler) per MM-DiT family: Flux is guidance-distilled (one conditional pass per item)
SAMPLING = {"flux": (1.0, "simple"), "chroma": (4.0, "simple"), "sd3": (4.5, "simple")}
PROC_STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")
RESET_HIGH_WATER_MARK = "5"  # clear_refs value that resets VmHWM to the current RSS (Linux 4.0+)


def _status_kb(field: str) -> int:
    for line in PROC_STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _release_free_heap() -> None:
    """Python's garbage, then the C heap's free pages, back to the OS: what an earlier block freed but the
    allocator kept would otherwise be reused without showing in the resident set."""
    gc.collect()
    libc = ctypes.util.find_library("c")
    trim = getattr(ctypes.CDLL(libc), "malloc_trim", None) if libc else None
    if trim is not None:
        trim(0)


class PeakMemory:
    """Peak memory a block needs above what is in use when it begins, in MB, measured two ways:

    `mb`, the tensors: the peak of bytes held by live tensors. CUDA: torch's allocator statistics
    (max_memory_allocated). CPU: torch.profiler's record of every allocation and free of the CPU allocator
    (profile_memory), summed in time order; it does not depend on what the C heap kept from earlier runs.
    `os_mb`, what the system sees (allocator slack included; None where it cannot be read). CUDA:
    max_memory_reserved. CPU: the resident-set high-water mark (VmHWM, Linux), reset as the block begins,
    after freed heap went back to the OS (gc, malloc_trim) so that memory an earlier run left in the heap is
    not reused unseen.
    """

    def __init__(self, device):
        self.device = torch.device(device)
        self.mb: float | None = None
        self.os_mb: float | None = None

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.cuda_base = torch.cuda.memory_allocated(self.device), torch.cuda.memory_reserved(self.device)
            return self
        _release_free_heap()
        try:
            CLEAR_REFS.write_text(RESET_HIGH_WATER_MARK)
            self.rss_base: int | None = _status_kb("VmRSS")
        except OSError:  # not Linux, or /proc not writable
            self.rss_base = None
        self.profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True)
        self.profiler.__enter__()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.mb = (torch.cuda.max_memory_allocated(self.device) - self.cuda_base[0]) / 2**20
            self.os_mb = (torch.cuda.max_memory_reserved(self.device) - self.cuda_base[1]) / 2**20
            return
        self.profiler.__exit__(*exc)
        if self.rss_base is not None:
            self.os_mb = (_status_kb("VmHWM") - self.rss_base) / 2**10
        profile = self.profiler.profiler
        results = None if profile is None else profile.kineto_results
        if results is None:
            raise RuntimeError("torch.profiler recorded no Kineto results for the block")
        # nbytes() exists on _KinetoEvent (torch/csrc/autograd/init.cpp) but is missing from torch's stubs
        changes = sorted((e.start_ns(), e.nbytes()) for e in results.events()  # ty: ignore[missing-attribute]
                         if e.name() == "[memory]")
        live = peak = 0
        for _, nbytes in changes:
            live += nbytes
            peak = max(peak, live)
        self.mb = peak / 2**20

    @staticmethod
    def how(device) -> str:
        if torch.device(device).type == "cuda":
            return ("tensors: torch.cuda.max_memory_allocated; system: torch.cuda.max_memory_reserved; each above "
                    "its value at the start of the run")
        return ("tensors: peak of live tensor bytes from torch.profiler's allocation record (profile_memory); "
                "system: resident-set high-water mark (VmHWM, reset through /proc/self/clear_refs after gc and "
                "malloc_trim); each above its value at the start of the run")


class UNetCalls:
    """The UNet's forward calls by the batch rows each carries (a forward pre-hook, removed on exit)."""

    def __init__(self, model_patcher):
        self.module = model_patcher.model.diffusion_model
        self.rows = Counter()  # rows in one call -> calls

    def _count(self, module, args, kwargs):
        x = args[0] if args else kwargs["x"]
        self.rows[x.shape[0]] += 1

    def summary(self) -> str:
        return " + ".join(f"{calls} x {rows}" for rows, calls in sorted(self.rows.items(), reverse=True))

    def __enter__(self):
        self.handle = self.module.register_forward_pre_hook(self._count, with_kwargs=True)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


@dataclass(frozen=True)
class Run:
    wall: float  # seconds per step
    cpu: float | None  # the process's CPU seconds per step, all threads (CPU device only): work done, less
    # sensitive than `wall` to other processes on the machine
    mb: float  # peak tensor memory (PeakMemory.mb)
    os_mb: float | None  # peak memory as the system sees it (PeakMemory.os_mb)
    unet: str  # UNet calls x rows in each, over the run

    def line(self) -> str:
        return (f"{self.wall:.3f} s/step, {_fmt(self.cpu, 3)} CPU s/step, tensors {self.mb:.0f} MB, system "
                f"{_fmt(self.os_mb, 0)} MB, UNet calls x rows {self.unet}")


COLUMNS = (("wall", "s/step", 2), ("cpu", "CPU s/step", 2), ("mb", "peak tensor MB", 0),
           ("os_mb", "peak system MB", 0))


def _fmt(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def timed(fn, device, steps: int, model) -> Run:
    with torch.inference_mode(), UNetCalls(model) as unet, PeakMemory(device) as memory:
        start, cpu = time.perf_counter(), time.process_time()
        fn(steps)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    return Run(elapsed / steps, None if device.type == "cuda" else cpu / steps, memory.mb, memory.os_mb,
               unet.summary())


def split_cond_uncond(executor, model, conds, x_in, timestep, model_options):
    """A CALC_COND_BATCH wrapper: the positive and the negative in separate UNet calls, always.

    ComfyUI batches them into one call when it estimates there is memory for it (on the CPU: the system's
    available memory, which other processes change), else splits them; left to it, runs of one benchmark can
    differ in their UNet calls and so in peak memory.
    """
    out = []
    for i in range(len(conds)):
        alone = [cond if j == i else None for j, cond in enumerate(conds)]
        out.append(executor(model, alone, x_in, timestep, model_options)[i])
    return out


def spread(values: list[float], digits: int, unit: str = "") -> str:
    """The median, then (min-max) when there are several."""
    med = f"{statistics.median(values):.{digits}f}{unit}"
    return med if len(values) == 1 else f"{med} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def build_runs(shape: str, size: int, edits: int, attention: str = "pytorch", split: bool = False):
    """Start ComfyUI, build a random-weight model of `shape`, and return (device, model, stock, p2p, default
    capture):
    `stock(steps)` runs the stock KSampler on 1+`edits` latents sharing one noise, `p2p(capture)(steps)`
    P2PSampler with `edits` word swaps on one latent; `split` runs the positive and negative apart."""
    from tools import host as host_module
    from tools.random_models import SHAPES, build_clip, build_model

    host_module.start(("--use-pytorch-cross-attention",) if attention == "pytorch" else ())
    import comfy.model_management
    import nodes
    from comfy.patcher_extension import WrappersMP

    pack = host_module.pack_module()
    device = comfy.model_management.get_torch_device()
    start = time.perf_counter()
    model, clip = build_model(SHAPES[shape]), build_clip(SHAPES[shape])
    print(f"model built in {time.perf_counter() - start:.0f} s", flush=True)
    if split:
        model = model.clone()
        model.add_wrapper_with_key(WrappersMP.CALC_COND_BATCH, "bench.sampler_overhead", split_cond_uncond)
    source = "a photo of a cat riding a bicycle"
    positive = nodes.CLIPTextEncode().encode(clip, source)[0]
    negative = nodes.CLIPTextEncode().encode(clip, "")[0]
    bundle = None
    for i in range(edits):
        target = "a photo of a dog riding a bicycle" + (f" {i}" if i else "")
        bundle = pack.nodes.P2PEditSpec.execute(clip, source, target, "auto", 0.8, 0.4, "coarse", previous=bundle)[0]
    batch, side, channels = 1 + edits, size // 8, SHAPES[shape].latent_channels
    cfg, scheduler = SAMPLING.get(getattr(SHAPES[shape], "family", ""), (7.5, "normal"))

    def stock(steps):
        latents = {"samples": torch.zeros(batch, channels, side, side), "batch_index": [0] * batch}  # one noise
        nodes.common_ksampler(model, 1, steps, cfg, "euler", scheduler, positive, negative, latents)

    def p2p(capture):
        def go(steps):
            pack.nodes.P2PSampler.execute(model, bundle, negative, 1, steps, cfg, "euler", scheduler, 1.0,
                                           latent_image={"samples": torch.zeros(1, channels, side, side)},
                                           capture=capture)
        return go

    return device, model, stock, p2p, pack.adapter.attention_view.DEFAULT_CAPTURE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="sd15-full")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--edits", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--attention", default="pytorch", choices=["pytorch", "comfy-default"])
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's "
                        "choice); 1 keeps small operations from waiting on a thread that another process preempted")
    parser.add_argument("--cond-batch", default="auto", choices=["auto", "split"], help="auto: ComfyUI "
                        "batches the positive and negative when it estimates memory allows; split: always apart")
    parser.add_argument("--only", choices=ONLY, help="run one configuration once, to size a full benchmark; no "
                        "warm-up")
    args = parser.parse_args()
    print("$ .venv/bin/python -m bench.sampler_overhead " + shlex.join(sys.argv[1:]), flush=True)
    if args.threads:
        torch.set_num_threads(args.threads)

    device, model, stock, p2p, default_capture = build_runs(args.shape, args.size, args.edits, args.attention,
                                                            split=args.cond_batch == "split")
    from tools.random_models import SHAPES  # after build_runs: it imports ComfyUI

    cfg, scheduler = SAMPLING.get(getattr(SHAPES[args.shape], "family", ""), (7.5, "normal"))
    batch = 1 + args.edits
    edits = f"{args.edits} edit{'s' if args.edits > 1 else ''}"
    configs = {f"KSampler, {batch} latents": stock,
               f"P2PSampler, {edits}, capture off": p2p(None),
               f"P2PSampler, {edits}, default capture": p2p(default_capture)}
    stock_name = next(iter(configs))
    header = (f"machine: {describe(device)}, attention: {args.attention}\n"
              f"model: {args.shape} (random weights), {args.size}x{args.size} px, {args.steps} steps, "
              f"cfg {cfg:g}, euler, {scheduler}, "
              f"positive and negative {'batched when memory allows' if args.cond_batch == 'auto' else 'split'}\n"
              f"peak memory: {PeakMemory.how(device)}")
    print(header, flush=True)

    if args.only:
        name = list(configs)[ONLY.index(args.only)]
        load = os.getloadavg()[0]
        start = time.perf_counter()
        run = timed(configs[name], device, args.steps, model)
        print(f"{name}: {run.line()}, {time.perf_counter() - start:.0f} s in all (cold: includes first-run "
              f"costs), load {load:.2f}", flush=True)
        return

    start = time.perf_counter()
    warm_up = timed(stock, device, 1, model)
    print(f"warm-up (1 step of {stock_name}, not counted): {time.perf_counter() - start:.0f} s, UNet calls x rows "
          f"{warm_up.unet}", flush=True)
    names = list(configs)
    runs: dict[str, list[Run]] = {n: [] for n in names}
    loads = []
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:  # each configuration in each position
            loads.append(os.getloadavg()[0])
            runs[name].append(timed(configs[name], device, args.steps, model))
            print(f"round {r + 1}: {name}: {runs[name][-1].line()}, load {loads[-1]:.2f}", flush=True)

    def values(name, field):
        found = [getattr(run, field) for run in runs[name]]
        return None if None in found else found

    def ratios(name, field):  # each round's ratio to the stock run of the same round
        found, stock = values(name, field), values(stock_name, field)
        return None if found is None or stock is None else [v / s for v, s in zip(found, stock, strict=True)]

    print(f"\n{header}\n{args.rounds} rounds (configurations rotated each round) after an uncounted warm-up; "
          f"median (min-max); vs stock: median of each round's ratio to the stock run of the same round; "
          f"1-minute load average {min(loads):.2f}-{max(loads):.2f} on {os.cpu_count()} cores\n")
    print("| run | " + " | ".join(f"{title} | vs stock" for _, title, _ in COLUMNS) + " | UNet calls x rows |")
    print("|---|" + "---|---|" * len(COLUMNS) + "---|")
    for name in names:
        cells = []
        for field, _, digits in COLUMNS:
            found, ratio = values(name, field), ratios(name, field)
            cells.append("n/a" if found is None else spread(found, digits))
            cells.append("n/a" if ratio is None else "1x" if name == stock_name else spread(ratio, 2, "x"))
        print(f"| {name} | {' | '.join(cells)} | {', '.join(sorted(set(values(name, 'unet'))))} |")
    print()
    for name in names[1:]:
        limit = next(v for k, v in TARGETS.items() if name.endswith(k))
        found = {field: ratios(name, field) for field, _, _ in COLUMNS}
        median = {field: None if r is None else statistics.median(r) for field, r in found.items()}
        # time on the clock, or the CPU time where other processes make the clock unreliable; tensor memory
        time_ok = min(r for r in (median["wall"], median["cpu"]) if r is not None) <= limit
        if median["mb"] is None:  # Run.mb is always recorded
            raise RuntimeError(f"no peak tensor memory ratio for {name}")
        met = time_ok and median["mb"] <= limit
        print(f"target for {name}: at most {limit:.2f}x the stock run: " +
              ", ".join(f"{title} {_fmt(median[field], 2)}x" for field, title, _ in COLUMNS) +
              f": {'met' if met else 'MISSED'}")


if __name__ == "__main__":
    main()
