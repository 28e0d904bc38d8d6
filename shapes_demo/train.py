"""Train the demo model on the shapes world.

    .venv/bin/python -m shapes_demo.train [--model v1|v2|v3] [--steps N] [--grounding-steps N] [--batch N]
        [--precision auto|bf16|fp32] [--out FILE] [--init-from FILE] [--pool N] [--autoencoder FILE]
        [--device cpu|cuda] [--workers N]

`--model v1` (the default): the 32x32 pixel-space model, 3600 + 1500 steps of batch 32. `--model v2` (issue
#21): the latent model, in three phases from one command: the autoencoder (`shapes_demo.autoencoder`, unless
its file exists), a pool of 60000 encoded scenes (`shapes_demo.latent_pool`, cached next to the output), then
8000 + 2000 steps of batch 64 on latents drawn from the pool, training only the rows of the world's words in
the text encoder's embedding table. v2's checkpoint (`*.checkpoint.pt`, 16-bit) is small enough to commit, so
a run can be split over several working sessions. `--model v3` (issue #21): v2 fine-tuned to 16x16 latents of
128x128 pictures: the autoencoder fine-tuned from v2's (`--model v3` of `shapes_demo.autoencoder`), a pool of
30000 scenes, then UNet and text encoder from v2's weights, 3000 + 1000 steps at lr 5e-4. v3 is the committed
model; a run of v3 on a machine without v2's weights (no longer committed) trains v2 first, with its recipe.

Deterministic: the scenes of step i come from seed i, the initialisation from a fixed seed, and the CPU
runs single-process with a fixed thread count. `--device cuda` trains on a GPU (bfloat16 autocast) with the same
scenes and noise, drawn on the CPU; a run may move between devices at a checkpoint. `--workers` processes
render a latent model's pool (the same pool whatever their number).

Trains ComfyUI's UNet (as built by `shapes_demo.model`) and a twin of ComfyUI's CLIP text model jointly:
v-prediction on the model's noise schedule (SD1's, rescaled to zero terminal SNR), low-noise steps
down-weighted (min-SNR style, gamma 5), AdamW with warm-up and cosine decay, 10% empty captions (for
classifier-free guidance), bfloat16 autocast with float32 weights where the CPU computes bfloat16 natively,
float32 elsewhere (`--precision`). Saves the exponential moving average of the weights, which samples better
than the raw ones. Logs the loss every 50 steps and keeps a resumable checkpoint next to the output.

Two phases: `--steps` on the diffusion loss alone, then `--grounding-steps` more with the attention
grounding loss added (`shapes_demo.grounding`: each position's cross-attention kept on the start token and
the words of the object under it), on a second warm-up and cosine schedule. `--init-from` starts from saved
weights instead of the random initialisation (fine-tuning: `--init-from FILE --steps 0 --grounding-steps 600`).
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import math
import random
import time
from pathlib import Path
from typing import TypedDict

import numpy as np
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from . import latent_pool
from .grounding import AttentionRecorder, allowed_tokens, grounding_loss, token_groups
from .model import TEXT_CONFIG, V1_WEIGHTS, V2_WEIGHTS, WEIGHTS
from .prerequisites import found_or_trained
from .text_encoder import TextEncoder
from .world import SIZE, render, sample_scene, world_vocabulary

EMPTY_CAPTION_RATE = 0.1


class Recipe(TypedDict, total=False):
    steps: int
    grounding_steps: int
    batch: int
    pool: int
    lr: float
    out: Path
    start: str  # a fine-tune: the model whose weights it starts from


RECIPES: dict[str, Recipe] = {  # the runs' settings (MODEL.md)
    "v1": {"steps": 3600, "grounding_steps": 1500, "batch": 32, "pool": 0, "lr": 1e-3, "out": V1_WEIGHTS},
    "v2": {"steps": 8000, "grounding_steps": 2000, "batch": 64, "pool": 60_000, "lr": 1e-3, "out": V2_WEIGHTS},
    "v3": {"steps": 3000, "grounding_steps": 1000, "batch": 64, "pool": 30_000, "lr": 5e-4, "out": WEIGHTS,
           "start": "v2"},  # fine-tuned from v2's weights (RECIPES["v2"]["out"])
}
MIN_SNR_GAMMA = 5.0


def batch_of(step: int, size: int, tokenize):
    """x0 [B, 3, 32, 32] in -1..1, tokens [B, 77], and each row's (scene, masks), or None for an empty caption."""
    rng = random.Random(1_000_003 * step + 17)
    images, tokens, truth = [], [], []
    for _ in range(size):
        scene = sample_scene(rng)
        image, masks = render(scene)
        images.append(image)
        empty = rng.random() < EMPTY_CAPTION_RATE
        tokens.append(tokenize("" if empty else scene.caption))
        truth.append(None if empty else (scene, masks))
    x0 = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2) * 2 - 1
    return x0.contiguous(), torch.tensor(tokens), truth


def pool_batch(step: int, size: int, tokenize, pool: latent_pool.LatentPool):
    """As `batch_of`, drawn from an encoded pool: x0 [B, C, h, w] latents, tokens [B, 77], and each row's
    (scene, per-object cell shares [h, w]) or None for an empty caption."""
    rng = random.Random(1_000_003 * step + 17)
    rows = [rng.randrange(len(pool)) for _ in range(size)]
    tokens, truth = [], []
    for i in rows:
        scene = latent_pool.pool_scene(i)
        empty = rng.random() < EMPTY_CAPTION_RATE
        tokens.append(tokenize("" if empty else scene.caption))
        shares = [pool.shares[i, j].float().numpy() for j in range(len(scene.objects))]
        truth.append(None if empty else (scene, shares))
    return pool.latents[rows], torch.tensor(tokens), truth


def grounding_targets(rows, side: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """allowed [B, side*side, length] and cells [B, side*side] for one attention resolution;
    `rows`: each row's (token groups, masks), or None for an empty caption."""
    allowed, cells = [], []
    for row in rows:
        if row is None:  # empty caption: nothing to ground
            allowed.append(np.zeros((side * side, length), bool))
            cells.append(np.zeros(side * side, bool))
            continue
        groups, masks = row
        a, c = allowed_tokens(groups, masks, side, length)
        allowed.append(a)
        cells.append(c)
    return torch.from_numpy(np.stack(allowed)), torch.from_numpy(np.stack(cells))


def trained_state(text: TextEncoder) -> dict:
    """The text encoder's state for a resumable checkpoint: without the full embedding table when only the
    vocabulary's rows train (the table is re-created from the seed on resume)."""
    state = text.state_dict()
    if text.vocabulary_embedding is not None:
        state.pop("text_model.embeddings.token_embedding.weight")
    return state


def halved(state):
    """A checkpoint with every float32 tensor in 16 bits: weights in float16, the optimiser's moments in bfloat16
    (their squares underflow float16). Loading casts them back to the parameters' float32; the rounding is
    below one optimiser step's change."""
    if isinstance(state, dict):
        return {k: (v.to(torch.bfloat16) if k in ("exp_avg", "exp_avg_sq") else v.half())
                if isinstance(v, torch.Tensor) and v.dtype == torch.float32 and k != "step" else halved(v)
                for k, v in state.items()}
    if isinstance(state, list):
        return [halved(v) for v in state]
    return state


def native_bf16() -> bool:
    """Whether this CPU computes in bfloat16 natively; without it PyTorch emulates bfloat16 slowly."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def init_for_training(module: torch.nn.Module, seed: int) -> None:
    """PyTorch's default initialisation (ComfyUI's layers skip it), zero-initialised output projections."""
    torch.manual_seed(seed)
    for m in module.modules():
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
            torch.nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5))
            if m.bias is not None:
                fan_in = m.weight[0].numel()
                torch.nn.init.uniform_(m.bias, -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))
        elif isinstance(m, (torch.nn.GroupNorm, torch.nn.LayerNorm)):
            torch.nn.init.ones_(m.weight)
            torch.nn.init.zeros_(m.bias)
    for name, m in module.named_modules():
        # as the original UNet: residual branches and the output start at zero
        if name == "out.2" or name.endswith("proj_out") or name.endswith("out_layers.3"):
            torch.nn.init.zeros_(m.weight)
            if m.bias is not None:
                torch.nn.init.zeros_(m.bias)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, help="first phase (default: the model's recipe, RECIPES)")
    parser.add_argument("--grounding-steps", type=int, help="second phase, with the grounding loss")
    parser.add_argument("--grounding-lr", type=float, default=5e-4)
    parser.add_argument("--grounding-weight", type=float, default=0.01)
    parser.add_argument("--batch", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--embed-std", type=float, default=1.0, help="initial std of the token embeddings")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--ema", type=float, default=0.999)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu",
                        help="where the networks train (cpu, cuda); the noise is drawn on the CPU either way, so a run "
                             "sees the same steps and noise on any device")
    parser.add_argument("--workers", type=int, default=1, help="processes rendering a latent model's pool")
    parser.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                        help="bf16: bfloat16 autocast with float32 weights, 1.9x faster than fp32 on CPUs with native "
                             "bfloat16 (AVX512-BF16 or AMX) and about 17x slower on CPUs without (AVX2 only); auto "
                             "picks bf16 where the CPU has it. The two give different (equally deterministic) weights")
    parser.add_argument("--model", choices=tuple(RECIPES), default="v1",
                        help="v1: the 32x32 pixel-space model; v2: the latent model (64x64 pictures through the "
                             "autoencoder `python -m shapes_demo.autoencoder` trains; issue #21); v3: v2 fine-tuned "
                             "to 128x128 pictures and 16x16 latents")
    parser.add_argument("--pool", type=int, help="latent models: scenes encoded once and drawn from")
    parser.add_argument("--autoencoder", type=Path, help="a latent model's autoencoder (default: the one "
                        "`python -m shapes_demo.autoencoder --model MODEL` writes, else the one the model's weights "
                        "carry, else trained first)")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--init-from", type=Path,
                        help="start from these weights (a file this script wrote) instead of a random initialisation")
    args = parser.parse_args(argv)
    recipe = RECIPES[args.model]
    for name, value in recipe.items():  # what the command line leaves unset (`start` is no option)
        if getattr(args, name, value) is None:
            setattr(args, name, value)
    for flag, path in (("--init-from", args.init_from), ("--autoencoder", args.autoencoder)):
        if path is not None and not path.is_file():
            parser.error(f"{flag}: no file at {path}")
    if args.init_from is None and (base := recipe.get("start")) is not None:
        base_weights = RECIPES[base]["out"]
        args.init_from = found_or_trained(
            f"{base} weights", lambda: base_weights if base_weights.is_file() else None,
            lambda: main(["--model", base, "--threads", str(args.threads), "--device", args.device,
                          "--workers", str(args.workers), "--precision", args.precision]))

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    bf16 = args.precision == "bf16" or (args.precision == "auto" and (device.type == "cuda" or native_bf16()))
    print(f"precision: {'bfloat16 autocast' if bf16 else 'float32'}", flush=True)
    from tools.host import import_comfy

    import_comfy(("--use-pytorch-cross-attention",))  # ComfyUI's CPU default (sub-quadratic) is ~4x slower here
    import comfy.model_sampling
    import comfy.sd1_clip
    from safetensors.torch import save_file

    from . import model_v2
    from .model import build_clip, build_model, model_config, split_state, token_ids, word_token_count

    latent = args.model != "v1"  # v2, v3
    autoencoder_state, pool = {}, None
    if latent:
        from safetensors.torch import load_file

        from .autoencoder import SHAPES, SUPERSAMPLE, build_autoencoder, stored_state
        from .autoencoder import main as train_autoencoder

        shape = SHAPES[args.model]
        if args.autoencoder is not None:
            autoencoder_state = load_file(str(args.autoencoder))
        else:  # phase 0: the autoencoder, with its own recipe
            autoencoder_state = found_or_trained(
                f"{args.model} autoencoder", lambda: stored_state(shape),
                lambda: train_autoencoder(["--model", args.model, "--threads", str(args.threads)]))
        encoder = build_autoencoder(autoencoder_state).taesd_encoder.requires_grad_(False).eval().to(device)

        def encode(pictures: torch.Tensor) -> torch.Tensor:  # [B, 3, S, S] in -1..1 -> [B, 4, S/8, S/8]
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                return encoder(pictures.to(device) * 0.5 + 0.5).float().cpu()

        unet_config = model_v2.UNET_CONFIGS[args.model]
        build_model = functools.partial(model_v2.build_model, unet_config=unet_config)
        model_config = functools.partial(model_v2.model_config, unet_config)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        pool = latent_pool.load_or_build(
            args.out.with_suffix(".pool.pt"), args.pool, encode, autoencoder_state,
            picture_size=shape.picture_size, supersample=SUPERSAMPLE, side=shape.latent_size, workers=args.workers)
        pool = latent_pool.LatentPool(pool.latents.to(device), pool.shares)
        print(f"latent pool: {len(pool)} scenes", flush=True)

    patcher = build_model()
    unet = patcher.model.diffusion_model
    init_for_training(unet, seed=0)
    clip = build_clip()
    clip_config = Path(comfy.sd1_clip.__file__).parent / "sd1_clip_config.json"
    text_config = {**json.loads(clip_config.read_text()), **TEXT_CONFIG}
    # a latent model trains only the rows of the world's words (a small table; the full one stays as initialised)
    text = TextEncoder(text_config, vocabulary=token_ids(clip, world_vocabulary()) if latent else None)
    torch.manual_seed(1)
    for p in text.parameters():  # CLIP-like: small normal weights, unit norms
        torch.nn.init.normal_(p, std=0.02) if p.ndim > 1 else torch.nn.init.zeros_(p)
    # Token embeddings far larger than the positions' and the layers' outputs, so each word's context vector is
    # distinct from step 0; not shown to beat CLIP's 0.02 (MODEL.md, "What made it follow prompts").
    torch.nn.init.normal_(text.text_model.embeddings.token_embedding.weight, std=args.embed_std)
    for m in text.modules():
        if isinstance(m, torch.nn.LayerNorm):
            torch.nn.init.ones_(m.weight)
    text.reset_vocabulary()

    if args.init_from:
        from safetensors.torch import load_file

        unet_state, text_state = split_state(load_file(str(args.init_from)))
        unet.load_state_dict(unet_state)
        text.load_state_dict(text_state, strict=False)
        text.reset_vocabulary()

    unet.to(device)
    text.to(device)
    tokenize, count_tokens = functools.partial(token_ids, clip), functools.partial(word_token_count, clip)

    sampling = comfy.model_sampling.ModelSamplingDiscrete(model_config())
    alphas_cumprod = 1.0 / (1.0 + sampling.get_buffer("sigmas").float() ** 2)  # [1000]
    snr = alphas_cumprod / (1 - alphas_cumprod)
    # Min-SNR-style cap on the low-noise steps only; the high-noise steps, where the prompt decides colours
    # and layout, keep their full weight (the plain min-SNR weight vanishes there under zero terminal SNR).
    loss_weight = (torch.clamp(snr + 1, max=MIN_SNR_GAMMA) / (snr + 1)).to(device)
    alphas_cumprod = alphas_cumprod.to(device)

    params = [p for p in (*unet.parameters(), *text.parameters()) if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01, betas=(0.9, 0.99))
    total = args.steps + args.grounding_steps

    def lr_factor(s: int) -> float:
        start, length, peak = (0, args.steps, 1.0) if s < args.steps else (
            args.steps, args.grounding_steps, args.grounding_lr / args.lr)
        s, length = s - start, max(length, 1)  # a phase of 0 steps is still asked for its lr once, at its end
        return peak * min(1.0, (s + 1) / args.warmup) * 0.5 * (1 + math.cos(math.pi * min(s, length) / length))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    ema_unet, ema_text = copy.deepcopy(unet).requires_grad_(False), copy.deepcopy(text).requires_grad_(False)
    recorder = AttentionRecorder(unet)  # after the copies: the averaged UNet is never run, so needs no hooks

    args.out.parent.mkdir(parents=True, exist_ok=True)
    # a latent model's checkpoint is compact (half-precision copies, 1/2 the size) and not git-ignored: a run longer
    # than one working session is resumed from the repository (issue #21)
    checkpoint = args.out.with_suffix(".checkpoint.pt" if latent else ".resume.pt")
    first = 0
    if checkpoint.exists():
        state = torch.load(checkpoint, weights_only=False, map_location=device)
        for module, key in ((unet, "unet"), (ema_unet, "ema_unet"), (optimizer, "optimizer"), (schedule, "schedule")):
            module.load_state_dict(state[key])
        for module, key in ((text, "text"), (ema_text, "ema_text")):  # without the untrained table under v2
            module.load_state_dict(state[key], strict=text.vocabulary_embedding is None)
        first = state["step"]
        for group in optimizer.param_groups:  # the schedule's lr for this step, whatever the saved run's schedule was
            group["lr"] = args.lr * lr_factor(first)
        print(f"resuming at step {first}")

    latent_shape = (args.batch, *pool.latents.shape[1:]) if pool is not None else (args.batch, 3, SIZE, SIZE)
    gen = torch.Generator().manual_seed(2)
    for _ in range(first):  # keep the noise stream aligned with the step on resume
        torch.randint(0, 1000, (args.batch,), generator=gen)
        torch.randn(latent_shape, generator=gen)
    def save_weights(path: Path, step: int) -> None:
        state = {f"unet.{k}": v.contiguous().cpu() for k, v in ema_unet.state_dict().items()}
        state |= {f"text.{k}": v.contiguous().cpu() for k, v in ema_text.comfy_state_dict().items()}
        state |= {f"vae.{k}": v.contiguous() for k, v in autoencoder_state.items()}
        metadata = {"steps": str(args.steps), "grounding_steps": str(args.grounding_steps), "batch": str(args.batch),
                    "step": str(step), "model": args.model}
        save_file(state, str(path), metadata=metadata)

    unet.train()
    started, losses, grounding_losses = time.perf_counter(), [], []
    for step in range(first, total):
        if pool is not None:
            x0, tokens, truth = pool_batch(step, args.batch, tokenize, pool)
        else:
            x0, tokens, truth = batch_of(step, args.batch, tokenize)
        recorder.active, recorder.records = step >= args.steps, []
        t = torch.randint(0, 1000, (args.batch,), generator=gen).to(device)
        noise = torch.randn(x0.shape, generator=gen).to(device)
        x0, tokens = x0.to(device), tokens.to(device)
        a = alphas_cumprod[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16), sdpa_kernel(SDPBackend.MATH):
            context = text(tokens)
            pred = unet(xt, t.float(), context=context).float()
        velocity = a.sqrt() * noise - (1 - a).sqrt() * x0
        loss = ((pred - velocity) ** 2).mean(dim=(1, 2, 3)).mul(loss_weight[t]).mean()
        losses.append(loss.item())
        if recorder.active:
            # grounding counts where the picture shows through the noise: weight = its signal share alpha_bar
            weight = a.view(-1) * torch.tensor([row is not None for row in truth], dtype=torch.float32, device=device)
            rows = [None if row is None else (token_groups(row[0], count_tokens), row[1]) for row in truth]
            targets, terms = {}, []
            for probs in recorder.records:  # [B, H, N, 77], one per cross-attention layer
                side = math.isqrt(probs.shape[2])
                if side not in targets:
                    targets[side] = tuple(x.to(device) for x in grounding_targets(rows, side, probs.shape[3]))
                terms.append(grounding_loss(probs, *targets[side], weight))
            grounding = torch.stack(terms).mean()
            grounding_losses.append(grounding.item())
            loss = loss + args.grounding_weight * grounding
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            decay = min(args.ema, (1 + step) / (10 + step))
            for ema, live in ((ema_unet, unet), (ema_text, text)):
                for pe, pl in zip(ema.parameters(), live.parameters(), strict=True):
                    if pl.requires_grad:
                        pe.lerp_(pl, 1 - decay)
        if (step + 1) % 50 == 0:
            elapsed = time.perf_counter() - started
            grounded = f"  grounding {np.mean(grounding_losses[-50:]):.3f}" if recorder.active else ""
            print(f"step {step + 1:5d}  loss {np.mean(losses[-50:]):.4f}{grounded}  "
                  f"lr {schedule.get_last_lr()[0]:.2e}  {elapsed / 60:.1f} min  "
                  f"{elapsed / (step + 1 - first):.2f} s/step", flush=True)
        if (step + 1) % 500 == 0 or step + 1 in (args.steps, total):
            resume = {"unet": unet.state_dict(), "text": trained_state(text), "ema_unet": ema_unet.state_dict(),
                      "ema_text": trained_state(ema_text), "optimizer": optimizer.state_dict(),
                      "schedule": schedule.state_dict(), "step": step + 1}
            torch.save(halved(resume) if latent else resume, checkpoint)
            if step + 1 < total:  # the averaged weights so far, for measuring a run while it trains
                save_weights(args.out.with_suffix(".snapshot.safetensors"), step + 1)

    save_weights(args.out, total)
    minutes = (time.perf_counter() - started) / 60
    print(f"saved {args.out} ({args.out.stat().st_size / 2**20:.1f} MB) after {minutes:.1f} min")


if __name__ == "__main__":
    main()
