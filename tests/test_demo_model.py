"""The shapes world, the demo model built from ComfyUI's classes, and its trained weights."""

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from shapes_demo import metrics
from shapes_demo.world import COLORS, POSITIONS, SIZE, render, sample_scene

ROOT = Path(__file__).resolve().parents[1]


def test_world_masks_are_exact():
    """Each object's mask holds exactly its visible pixels: the palette classification of the rendered
    image agrees with it (up to the one-pixel anti-aliased rim)."""
    for seed in range(40):
        scene = sample_scene(random.Random(seed))
        image, masks = render(scene)
        assert image.shape == (SIZE, SIZE, 3) and len(masks) == len(scene.objects)
        for obj, mask in zip(scene.objects, masks, strict=True):
            assert mask.sum() > 0
            colored = metrics.color_mask(image, obj.color)
            assert metrics.iou(colored & ~metrics.dilate(~mask, 1), mask & ~metrics.dilate(~mask, 1)) > 0.95
        assert not np.logical_and.reduce(masks).any() if len(masks) > 1 else True


def test_captions_name_what_is_drawn_and_omit_the_rest():
    seen = {"position": 0, "no position": 0, "no size": 0, "no background": 0}
    for seed in range(300):
        scene = sample_scene(random.Random(seed))
        for obj in scene.objects:
            assert f"{obj.color} {obj.shape}" in scene.caption
            if obj.position is not None:
                seen["position"] += POSITIONS[obj.position][1] in scene.caption
            else:
                seen["no position"] += 1
            seen["no size"] += not obj.say_size
        seen["no background"] += not scene.say_background
    assert all(count > 20 for count in seen.values()), seen


def test_unnamed_layout_is_free():
    """Scenes with the same caption differ in layout where the caption is silent."""
    positions = []
    rng = random.Random(0)
    while len(positions) < 30:
        scene = sample_scene(rng, max_objects=1)
        obj = scene.objects[0]
        if obj.position is None:
            positions.append((obj.x, obj.y, obj.radius))
    xs, ys, rs = np.array(positions).T
    assert xs.std() > 5 and ys.std() > 5 and rs.std() > 1


def test_text_encoder_twin_matches_comfyui(host):
    """The trainable twin and ComfyUI's SD1 CLIP text model give the same context for the same weights."""
    import comfy.sd1_clip

    from shapes_demo.model import TEXT_CONFIG, build_clip
    from shapes_demo.text_encoder import TextEncoder

    config = {**json.loads((Path(comfy.sd1_clip.__file__).parent / "sd1_clip_config.json").read_text()), **TEXT_CONFIG}
    twin = TextEncoder(config)
    torch.manual_seed(0)
    for p in twin.parameters():
        torch.nn.init.normal_(p, std=0.1)
    clip = build_clip(twin.state_dict())
    prompt = "a big red circle on the left and a striped blue square"
    tokens = clip.tokenize(prompt)
    ours = twin(torch.tensor([[t for t, _ in tokens["l"][0]]]))
    theirs = clip.encode_from_tokens(tokens)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_demo_weights_are_small_and_load(pack):
    from shapes_demo.model import WEIGHTS

    assert WEIGHTS.stat().st_size < 40 * 2**20
    model, clip, vae = pack.nodes.P2PDemoModel.execute()
    dm = model.get_model_object("diffusion_model")
    assert type(dm).__name__ == "UNetModel" and model.model.latent_format.latent_channels == 4
    assert {s.downsample for s in pack.adapter.unet.attention_sites(model)} == {1, 2, 4}  # 8x8, 4x4, 2x2
    assert type(vae.first_stage_model).__name__ == "TAESD"


def test_demo_model_draws_what_it_is_told(host):
    """The trained model renders the named colour in most of a handful of fixed prompts and seeds."""
    from bench.shapesbench import Bench

    bench = Bench(steps=20, host=host)
    hits = 0
    cases = [(c, s) for c in COLORS for s in ("circle", "square")]
    for i, (color, shape) in enumerate(cases):
        image = bench.baseline(f"a big {color} {shape}", seed=i)
        hits += metrics.area(metrics.color_mask(image, color)) >= 20
    assert hits >= 0.8 * len(cases)


def test_grounding_targets_follow_the_caption_and_the_masks(host):
    """The grounding loss's targets (training phase 2): each object's token group is exactly its phrase's
    tokens, the background's is its phrase's, and a position may attend to the start token plus the words
    of what lies under it."""
    from shapes_demo.grounding import START, allowed_tokens, token_groups
    from shapes_demo.model import build_clip, token_ids, word_token_count

    clip = build_clip()
    end = clip.tokenizer.clip_l.end_token
    decode = clip.tokenizer.clip_l.tokenizer.convert_ids_to_tokens
    for seed in range(30):
        scene = sample_scene(random.Random(seed))
        ids = token_ids(clip, scene.caption)
        groups = token_groups(scene, lambda text: word_token_count(clip, text))
        for obj, group in zip(scene.objects, groups[:-1], strict=True):  # the last group is the background
            words = [w.removesuffix("</w>") for w in decode([ids[i] for i in group])]
            assert words[0] in ("a", "an") and obj.color in words and words[words.index(obj.color) + 1] == obj.shape
            if obj.say_position and obj.position is not None:
                assert words[-1] in POSITIONS[obj.position][1].split()
        background = [w.removesuffix("</w>") for w in decode([ids[i] for i in groups[-1]])]
        assert background == (["on", "a", scene.background, "background"] if scene.say_background else [])
        _, masks = render(scene)
        allowed, cells = allowed_tokens(groups, masks, 8, len(ids))
        assert allowed[:, START].all() and not allowed[:, ids.index(end):].any()  # never the padding
        for j, mask in enumerate(masks):
            share = mask.reshape(8, 4, 8, 4).mean(axis=(1, 3)).reshape(-1)
            assert cells[share >= 0.5].all() and allowed[np.ix_(share >= 0.5, groups[j])].all()
            others = [t for g in groups[:j] + groups[j + 1:] for t in g]
            assert not allowed[np.ix_(share >= 0.5, others)].any()
        nothing = np.sum([m.reshape(8, 4, 8, 4).mean(axis=(1, 3)).reshape(-1) for m in masks], axis=0) == 0
        assert cells[nothing].all() and allowed[nothing].sum(1).max() == 1 + len(groups[-1])


def test_object_words_attend_to_their_objects(host, pack):
    """The grounded weights attend as real checkpoints do: a colour word's heatmap lies on the object of that
    colour (the heatmaps P2P Sampler captures, on a two-object scene), not over the whole picture."""
    from bench.shapesbench import Bench
    from p2p.capture import word_maps

    bench = Bench(steps=20, host=host)
    # the second half of the steps, on the full-resolution (16x16) layers: where the picture shows through the noise
    capture = pack.nodes.P2PAttentionCapture.execute(True, "1/1", 0.5, 1.0, "down+up", False, False)[0]
    lift = []
    for seed in range(4):
        edit = pack.nodes.P2PEditSpec.execute(bench.clip, "a red circle and a blue square",
                                              "a yellow circle and a blue square", mode="auto",
                                              cross_replace=0.8, self_replace=0.4, self_layers="coarse")[0]
        latent, attention = pack.nodes.P2PSampler.execute(bench.model, edit, bench.negative, seed, 20, 5.0, "euler",
                                                           "normal", 1.0, latent_image=bench.latent,
                                                           capture=capture)
        source = bench._decode(latent)[0]
        side = attention.maps.spatial[0]
        for word in ("red", "blue"):
            mask = metrics.object_mask(source, word)
            if metrics.area(mask) < 12:
                continue
            (_, heat), = word_maps(attention.maps, 0, [(word,)])  # [side, side]
            cells = torch.from_numpy(metrics.dilate(mask, 1).reshape(side, SIZE // side, side, SIZE // side)
                                     .any(axis=(1, 3)))
            # the share of the word's attention on its object, over the share a uniform map would put there
            lift.append(float(heat[cells].sum() / heat.sum()) / float(cells.float().mean()))
    assert len(lift) >= 4, "the model drew too few of the objects"
    assert np.mean(lift) >= 2.5, (np.mean(lift), lift)  # 3.1 on the committed weights, 1.8 before grounding


def test_training_script_runs_both_phases_and_writes_loadable_weights(tmp_path, host):
    """Two diffusion steps, one grounding step, batch 4: the script ends, saves weights ComfyUI's classes
    load, a second run with the same arguments resumes from its checkpoint rather than retraining, and a run
    with --init-from starts from the saved weights."""
    import subprocess
    import sys

    from safetensors.torch import load_file, save_file

    from shapes_demo.model import load

    def train(*args: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "shapes_demo.train", "--batch", "4", "--precision", "fp32", *args]
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        return done

    out = tmp_path / "tiny.safetensors"
    tiny = ("--steps", "2", "--grounding-steps", "1", "--out", str(out))
    train(*tiny)
    assert out.is_file() and out.with_suffix(".resume.pt").is_file()
    model, clip, vae = load(out)
    assert all(torch.isfinite(p).all() for p in model.model.diffusion_model.parameters())
    assert "resuming at step 3" in train(*tiny).stdout

    # fine-tuning: one grounding step from given weights stays near them. Those three steps left the weights
    # near the fixed random initialisation, so shift them away from it, or ignoring --init-from would pass too.
    start = {k: v + 0.1 for k, v in load_file(str(out)).items()}
    save_file(start, str(tmp_path / "start.safetensors"))
    tuned = tmp_path / "tuned.safetensors"
    train("--steps", "0", "--grounding-steps", "1", "--init-from", str(tmp_path / "start.safetensors"),
          "--out", str(tuned))
    end = load_file(str(tuned))
    assert start.keys() == end.keys()
    assert max((end[k] - start[k]).abs().max().item() for k in start) < 1e-3


# --- demo model v2 (issue #21): the latent model's parts -------------------------------------------------------


def test_world_renders_the_same_scene_finer():
    """A scene rendered at 64x64 samples the same points as at 32x32: averaged down, the picture is the 32x32
    one, and every pixel of an object's 32x32 mask holds a pixel of its 64x64 mask."""
    for seed in range(20):
        scene = sample_scene(random.Random(seed))
        image, masks = render(scene)
        fine, fine_masks = render(scene, supersample=2, size=2 * SIZE)
        assert fine.shape == (2 * SIZE, 2 * SIZE, 3)
        np.testing.assert_allclose(metrics.to_world_pixels(fine[None])[0], image, atol=1e-5)
        for mask, fine_mask in zip(masks, fine_masks, strict=True):
            covered = np.asarray(fine_mask.reshape(SIZE, 2, SIZE, 2).any(axis=(1, 3)))
            assert covered[mask].all()


def test_text_encoder_trained_rows_reach_comfyui(host):
    """Training only the world's vocabulary rows (v2): the small table's rows are what ComfyUI's CLIP uses for
    those tokens, every other row stays as initialised, and the twin matches ComfyUI's output."""
    import comfy.sd1_clip

    from shapes_demo.model import TEXT_CONFIG, build_clip, token_ids
    from shapes_demo.text_encoder import TextEncoder
    from shapes_demo.world import world_vocabulary

    config = {**json.loads((Path(comfy.sd1_clip.__file__).parent / "sd1_clip_config.json").read_text()), **TEXT_CONFIG}
    vocabulary = token_ids(build_clip(), world_vocabulary())
    twin = TextEncoder(config, vocabulary=vocabulary)
    torch.manual_seed(0)
    for p in twin.parameters():
        torch.nn.init.normal_(p, std=0.1)
    assert twin.vocabulary_embedding is not None
    table = twin.text_model.embeddings.token_embedding.weight.detach().clone()
    assert not twin.text_model.embeddings.token_embedding.weight.requires_grad
    state = twin.comfy_state_dict()
    written = state["text_model.embeddings.token_embedding.weight"]
    ids = sorted(set(vocabulary))
    torch.testing.assert_close(written[ids], twin.vocabulary_embedding.detach())
    others = torch.ones(len(table), dtype=torch.bool)
    others[ids] = False
    assert torch.equal(written[others], table[others])
    clip = build_clip(state)
    tokens = clip.tokenize("a big red circle on the left and a striped blue square")
    ours = twin(torch.tensor([[t for t, _ in tokens["l"][0]]]))
    torch.testing.assert_close(ours, clip.encode_from_tokens(tokens), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("model", ["v2", "v3"])
def test_autoencoder_is_a_comfyui_taesd(host, model):
    """A latent model's autoencoder state loads into ComfyUI's VAE as TAESD (4 channels, 8x downscale), and
    ComfyUI's VAE Encode gives the latents the training pipeline computes with the bare encoder, at the model's
    picture and latent sizes (v2: 64 -> 8, v3: 128 -> 16)."""
    import comfy.sd

    from shapes_demo.autoencoder import LATENT_CHANNELS, SHAPES, build_autoencoder, scene_batch

    shape = SHAPES[model]
    module = build_autoencoder()
    torch.manual_seed(0)
    for p in module.parameters():
        torch.nn.init.normal_(p, std=0.05)
    with torch.no_grad():
        module.vae_scale.fill_(1.0)
        module.vae_shift.fill_(0.0)
    vae = comfy.sd.VAE(sd=module.state_dict())
    assert vae.latent_channels == LATENT_CHANNELS and vae.spacial_compression_encode() == 8
    pictures, presence, _ = scene_batch(0, 2, shape)  # [2, 3, S, S] in -1..1
    side = shape.latent_size
    assert pictures.shape == (2, 3, shape.picture_size, shape.picture_size) and presence.shape == (2, side, side)
    with torch.inference_mode():
        ours = module.taesd_encoder(pictures * 0.5 + 0.5)
        theirs = vae.encode(pictures.permute(0, 2, 3, 1) * 0.5 + 0.5)  # VAE Encode takes [B, H, W, 3] in 0..1
    assert ours.shape == (2, LATENT_CHANNELS, side, side)
    torch.testing.assert_close(theirs.float(), ours, rtol=1e-4, atol=1e-4)


def test_a_weights_file_names_its_latent_size(host, tmp_path):
    """v2 and v3 share their layers; `load` builds the UNet configuration the file's metadata names (v2 when it
    names none, as the committed file was written before v3)."""
    from safetensors.torch import load_file, save_file

    from shapes_demo.model import WEIGHTS, load

    state = load_file(str(WEIGHTS))
    sizes = {}
    for name, metadata in (("v3", {"model": "v3"}), ("unnamed", None)):
        path = tmp_path / f"{name}.safetensors"
        save_file(state, str(path), metadata=metadata)
        sizes[name] = load(path)[0].model.model_config.unet_config["image_size"]
    assert sizes == {"v3": 16, "unnamed": 8}


def test_latent_pool_is_rebuilt_exactly_and_its_shares_ground_as_the_masks_do(host):
    """A pool of encoded scenes is a function of its size and encoder, however many processes render it; the
    cell shares it keeps give the grounding loss the same targets as the full-resolution masks."""
    from shapes_demo.grounding import allowed_tokens, token_groups
    from shapes_demo.latent_pool import build, pool_scene
    from shapes_demo.model import build_clip, word_token_count

    def encode(x):  # a stand-in encoder: 8x8 cell means and one more channel
        cells = torch.nn.functional.avg_pool2d(x, 8)
        return torch.cat([cells, cells.mean(1, keepdim=True)], 1)

    first, second = (build(6, encode, picture_size=64, supersample=2, side=8, workers=n) for n in (1, 2))
    assert torch.equal(first.latents, second.latents) and torch.equal(first.shares, second.shares)
    assert first.latents.shape == (6, 4, 8, 8)
    clip = build_clip()
    for i in range(6):
        scene = pool_scene(i)
        _, masks = render(scene, supersample=2, size=64)
        shares = [first.shares[i, j].float().numpy() for j in range(len(masks))]
        groups = token_groups(scene, lambda text: word_token_count(clip, text))
        for side in (8, 4, 2):
            from_masks, from_shares = allowed_tokens(groups, masks, side, 77), allowed_tokens(groups, shares, side, 77)
            assert all(np.array_equal(a, b) for a, b in zip(from_masks, from_shares, strict=True))


def test_latent_training_runs_from_the_autoencoder_to_loadable_weights(tmp_path, host):
    """The latent models' recipes at toy size, v2 from a random initialisation and v3 fine-tuned from it: the
    autoencoder trains, the diffusion phases train on a pool of its latents, the weights load as ComfyUI parts
    (TAESD VAE, 4-channel UNet at the model's latent size), and a second run resumes from the compact (16-bit)
    checkpoint. v3's three warm-up steps leave it at the v2 it started from; v2 ends far from the committed model."""
    import subprocess
    import sys

    from safetensors.torch import load_file

    from shapes_demo.autoencoder import SHAPES
    from shapes_demo.model import WEIGHTS, load, split_state

    def run(module: str, *args: str) -> subprocess.CompletedProcess:
        done = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        return done

    def files(model: str) -> tuple:
        return tmp_path / f"{model}_vae.safetensors", tmp_path / f"{model}.safetensors"

    (v2_autoencoder, v2_out) = files("v2")
    for model, reference, autoencoder_start, start in (
        ("v2", WEIGHTS, (), ()),
        ("v3", v2_out, ("--init-from", str(v2_autoencoder)), ("--init-from", str(v2_out))),
    ):
        autoencoder, out = files(model)
        run("shapes_demo.autoencoder", "--model", model, "--steps", "2", "--batch", "2", "--out", str(autoencoder),
            *autoencoder_start)
        tiny = ("--model", model, "--autoencoder", str(autoencoder), "--pool", "8", "--batch", "4", "--steps", "2",
                "--grounding-steps", "1", "--precision", "fp32", "--out", str(out), *start)
        run("shapes_demo.train", *tiny)
        unet, _, vae = load(out)
        assert unet.model.latent_format.latent_channels == 4 and vae.spacial_compression_decode() == 8
        assert unet.model.model_config.unet_config["image_size"] == SHAPES[model].latent_size
        assert all(torch.isfinite(p).all() for p in unet.model.diffusion_model.parameters())
        trained, started = (split_state(load_file(str(f)), ("unet",))[0] for f in (out, reference))
        moved = max((trained[k] - started[k]).abs().max().item() for k in started)
        assert (moved > 0.1) if model == "v2" else (moved < 1e-2)
        checkpoint = torch.load(out.with_suffix(".checkpoint.pt"), weights_only=False)
        assert {v.dtype for v in checkpoint["unet"].values()} == {torch.float16}
        states = list(checkpoint["optimizer"]["state"].values())
        assert {s["exp_avg_sq"].dtype for s in states} == {torch.bfloat16}  # float16 would underflow
        assert {s["step"].dtype for s in states} == {torch.float32}  # counts stay exact
        assert "resuming at step 3" in run("shapes_demo.train", *tiny).stdout


def test_a_fine_tune_trains_the_model_it_starts_from_when_its_weights_are_missing():
    """v3 starts from v2, whose weights are no longer committed: its recipes name v2, whose recipes write the
    files v3's look for, so a run from scratch trains v2 first; a missing file named on the command line is an
    error."""
    import subprocess
    import sys

    from shapes_demo import autoencoder, train

    assert train.RECIPES["v3"]["start"] == "v2" and autoencoder.SHAPES["v3"].start == "v2"
    assert autoencoder.SHAPES["v2"].model_file == train.RECIPES["v2"]["out"]
    for module, flag in (("shapes_demo.train", "--init-from"), ("shapes_demo.train", "--autoencoder"),
                         ("shapes_demo.autoencoder", "--init-from")):
        done = subprocess.run([sys.executable, "-m", module, "--model", "v3", flag, "missing.safetensors"],
                              cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and f"{flag}: no file at missing.safetensors" in done.stderr


def test_an_autoencoder_is_read_from_its_file_else_from_its_model_weights(tmp_path):
    """Only the model's weights are committed; they carry the autoencoder, which training and the autoencoder
    bench read when its own file is missing, and which training writes back into the model's file."""
    from dataclasses import replace

    from safetensors.torch import load_file, save_file

    from shapes_demo.autoencoder import SHAPES, stored_state
    from shapes_demo.model import WEIGHTS, split_state
    from shapes_demo.prerequisites import found_or_trained

    v3 = SHAPES["v3"]
    assert v3.model_file == WEIGHTS
    carried = split_state(load_file(str(WEIGHTS)), ("vae",))[0]
    nowhere = replace(v3, file=tmp_path / "vae.safetensors", model_file=tmp_path / "model.safetensors")
    from_model = stored_state(replace(v3, file=nowhere.file))
    assert carried and from_model is not None and from_model.keys() == carried.keys()
    assert all(torch.equal(from_model[k], carried[k]) for k in carried)
    assert stored_state(nowhere) is None
    own = {k: v + 1 for k, v in list(carried.items())[:2]}
    save_file(own, str(nowhere.file))
    from_own = stored_state(nowhere)
    assert from_own is not None and from_own.keys() == own.keys()  # its own file first

    trained = []
    assert found_or_trained("x", lambda: stored_state(nowhere), lambda: trained.append(1)) is not None
    assert not trained  # found: nothing trained
    nowhere.file.unlink()
    found = found_or_trained("x", lambda: stored_state(nowhere), lambda: save_file(own, str(nowhere.file)))
    assert found.keys() == own.keys()
