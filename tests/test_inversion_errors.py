"""Inversions that do not fit, damaged inversion files and non-finite inputs: each is refused with one message
that names the node and the input, through ComfyUI's own executor (the demo model, tiny random SD models)."""

import io
import pickle
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from test_inversion import NULL_TEXT, SOURCE, TARGET, RenderedScene, demo_graph, psnr

from shapes_demo.autoencoder import PICTURE_SIZE
from tools.graph import Graph
from tools.host import HostError

NAN = float("nan")
LONG_NEGATIVE = "blurry, dark, noisy, " * 30  # a context of several 77-token chunks


@pytest.fixture(scope="module", autouse=True)
def test_nodes(host):
    host.register({"P2PTestRenderedScene": RenderedScene})


@pytest.mark.parametrize("invert_negative, sample_negative", [(LONG_NEGATIVE, ""), ("", LONG_NEGATIVE)],
                         ids=["inverted_long_sampled_empty", "inverted_empty_sampled_long"])
def test_null_text_keeps_its_contexts_whatever_the_negatives_length(host, invert_negative, sample_negative):
    """The optimised unconditional contexts replace the sampler's negative even when it has another token
    length than the one inverted with: the source regenerates the inversion's reconstruction."""
    g = demo_graph("null_text", steps=6)
    model = g.nodes["model"]
    g.nodes["negative"].inputs["text"] = invert_negative
    g.nodes["p2p"].inputs["negative"] = g.node("CLIPTextEncode", "sample_negative", clip=model.out(1),
                                               text=sample_negative)
    g.node("VAEDecode", "decode", samples=g.nodes["p2p"].out(0), vae=model.out(2))
    out = host.run(g.prompt(), keep=("decode", "invert"))
    assert psnr(out["invert"][1][0], out["decode"][0][0]) > 45


def test_null_context_patch_refuses_a_context_it_cannot_replace(pack):
    """Passing a context through unchanged would silently drop the inversion's optimisation."""
    patch = pack.adapter.inversion.NullContextPatch("P2PSampler")
    patch.context = torch.zeros(154, 8)
    context = torch.zeros(2, 77, 8)
    with pytest.raises(ValueError, match=r"^P2PSampler: input 'model': the null-text inversion's unconditional "
                                         r"contexts \(154 tokens of width 8\) do not fit"):
        patch(torch.zeros(2, 16, 8), context, context, {"cond_or_uncond": [0, 1]})


# --- inversion files -------------------------------------------------------------------------------------------

STEPS, CFG = 4, 5.0


@pytest.fixture(scope="module")
def folder(host):
    import folder_paths

    path = Path(folder_paths.get_output_directory()) / "p2p_inversions"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def saved(host, folder):
    """A null-text inversion of the demo scene as P2PSaveInversion writes it: (tensors, metadata)."""
    g = demo_graph("null_text", steps=STEPS, cfg=CFG, inner_steps=2)
    g.node("P2PSaveInversion", "save", inversion=g.nodes["invert"].out(0), filename_prefix="errors_reference")
    host.run(g.prompt())
    name = [e for e in host.server.of("executed") if e["node"] == "save"][0]["output"]["text"][0].split("/")[1]
    path = folder / name
    with safe_open(str(path), framework="pt") as f:
        result = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()  # noqa: SIM118 (safe_open is not a mapping)
    path.unlink()
    return result


@pytest.fixture
def written(folder):
    """Writes files into output/p2p_inversions/ (bytes, a link, or tensors and metadata); removes them after."""
    names = []

    def write(name, content=None, *, tensors=None, metadata=None, link_to=None):
        path = folder / name
        names.append(path)
        if link_to is not None:
            path.symlink_to(link_to)
        elif tensors is not None:
            save_file({k: t.contiguous() for k, t in tensors.items()}, str(path), metadata=metadata)
        else:
            path.write_bytes(content)
        return name

    yield write
    for path in names:
        path.unlink(missing_ok=True)


def loaded_graph(file, steps=STEPS, cfg=CFG):
    """The demo model editing a loaded inversion of its scene."""
    g = Graph()
    model = g.node("P2PDemoModel", "model")
    neg = g.node("CLIPTextEncode", "negative", clip=model.out(1), text="")
    edit = g.node("P2PEditSpec", "edit", clip=model.out(1), source_prompt=SOURCE, target_prompt=TARGET, mode="auto",
                  cross_replace=0.8, self_replace=0.4, self_layers="coarse", word_schedule="")
    load = g.node("P2PLoadInversion", "load", file=file)
    g.node("P2PSampler", "p2p", model=model.out(0), edit=edit, negative=neg, seed=0, steps=steps, cfg=cfg,
           sampler_name="euler", scheduler="normal", denoise=1.0, inversion=load.out(0))
    return g


def _torch_saved() -> bytes:
    buffer = io.BytesIO()
    torch.save({"sigmas": torch.zeros(3)}, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize("content", [
    b"",
    b"sigmas = [14.6, 0.0]\n",
    pickle.dumps({"sigmas": [14.6, 0.0]}),
    _torch_saved(),
    "truncated",
    "link to /etc/passwd",
], ids=["empty", "text", "pickle", "torch_save", "truncated", "link_to_a_system_file"])
def test_files_that_are_not_inversions_are_refused(host, saved, folder, written, content):
    if content == "truncated":
        written("whole.safetensors", tensors=saved[0], metadata=saved[1])
        content = (folder / "whole.safetensors").read_bytes()[:-100]
    if content == "link to /etc/passwd":
        file = written("x.safetensors", link_to="/etc/passwd")
    else:
        file = written("x.safetensors", content)
    with pytest.raises(HostError, match=r"^P2PLoadInversion: input 'file': x\.safetensors is not a safetensors "
                                        r"file, or it is truncated") as error:
        host.run(loaded_graph(file).prompt(), keep=("load",))
    assert str(folder.parent) not in str(error.value)


def _changed(saved, **changes):
    """The saved inversion with tensors or metadata entries replaced (None: removed)."""
    tensors, metadata = dict(saved[0]), dict(saved[1])
    for key, value in changes.items():
        target = tensors if key in tensors or isinstance(value, torch.Tensor) else metadata
        if value is None:
            del target[key]
        else:
            target[key] = value(target[key]) if callable(value) else value
    return tensors, metadata


DAMAGED = r"is damaged or from another version: "


@pytest.mark.parametrize("changes, match", [
    ({"format": None}, r"is not a P2P inversion"),
    ({"version": "99"}, r"has format version '99'; this version of the pack reads version 1"),
    ({"trajectory": None}, DAMAGED + r"it has no trajectory"),
    ({"cfg": "abc"}, DAMAGED + r"its cfg 'abc' is not a number"),
    ({"cfg": "nan"}, DAMAGED + r"its guidance scale is nan"),
    ({"method": "magic"}, DAMAGED + r"unknown inversion method 'magic'"),
    ({"latent_channels": "three"}, DAMAGED + r"its latent_channels 'three' are not its trajectory's 4"),
    ({"trajectory": lambda t: (t * 100).long()}, DAMAGED + r"its trajectory tensor is torch.int64"),
    ({"trajectory": lambda t: t.flatten(1)}, DAMAGED + r"its trajectory tensor has 2 dimensions instead of 4"),
    ({"trajectory": lambda t: t[1:]}, DAMAGED + r"its trajectory has 4 latents for 5 sigmas"),
    ({"trajectory": lambda t: t.index_fill(0, torch.tensor([2]), float("nan"))},
     DAMAGED + r"its trajectory tensor holds NaN or infinite values"),
    ({"sigmas": lambda s: s.flip(0)}, DAMAGED + r"its sigmas are not a noise schedule"),
    ({"sigmas": lambda s: s[None]}, DAMAGED + r"its sigmas tensor has 2 dimensions instead of 1"),
    ({"sigmas": lambda s: s.index_fill(0, torch.tensor([0]), float("inf"))},
     DAMAGED + r"its sigmas tensor holds NaN or infinite values"),
    ({"null_contexts": None}, DAMAGED + r"a null-text inversion needs its unconditional contexts"),
    ({"null_contexts": lambda c: c[1:]}, DAMAGED + r"its null-text inversion has 3 unconditional contexts for 4 steps"),
    ({"null_contexts": lambda c: c[0]}, DAMAGED + r"its null_contexts tensor has 2 dimensions instead of 3"),
    ({"null_contexts": lambda c: c * float("nan")}, DAMAGED + r"its null_contexts tensor holds NaN"),
], ids=["no_format", "other_version", "no_trajectory", "cfg_text", "cfg_nan", "unknown_method",
        "latent_channels_text", "integer_trajectory", "flat_trajectory", "short_trajectory", "nan_trajectory",
        "ascending_sigmas", "sigmas_2d", "inf_sigmas", "no_null_contexts", "null_contexts_per_step",
        "null_contexts_2d", "nan_null_contexts"])
def test_damaged_inversion_files_are_refused_by_the_loader(host, saved, folder, written, changes, match):
    tensors, metadata = _changed(saved, **changes)
    file = written("damaged.safetensors", tensors=tensors, metadata=metadata)
    with pytest.raises(HostError, match=rf"^P2PLoadInversion: input 'file': damaged\.safetensors {match}") as error:
        host.run(loaded_graph(file).prompt(), keep=("p2p",))
    assert str(folder.parent) not in str(error.value)


@pytest.mark.parametrize("changes, match", [
    ({"null_contexts": lambda c: torch.cat([c, c], dim=2)},
     r"input 'inversion': its null-text contexts are 128 wide; this model's text contexts are 64 wide"),
    ({"null_contexts": lambda c: c[:, :70]},
     r"input 'inversion': its null-text contexts have 70 tokens, not a whole number of the text encoder's "
     r"77-token chunks"),
    ({"trajectory": lambda t: t[..., :6, :6]},
     r"input 'inversion': its latent is 6x6, but this model's latent sides are multiples of 4"),
    ({"sigmas": lambda s: s * 1.5}, r"input 'inversion': was made for another model's noise schedule"),
    ({"latent_format": "SDXL"}, r"input 'inversion': was made with a model whose latents are SDXL's; this "
                                r"model's are ShapesDemo's"),
    ({"scheduler": "karras"}, r"input 'scheduler': the inversion was made with the 'karras' scheduler"),
], ids=["context_width", "context_tokens", "latent_size", "noise_schedule", "latent_format", "scheduler"])
def test_inversions_that_do_not_fit_the_sampler_name_the_input_to_change(host, saved, written, changes, match):
    """The file is sound but made for another model, or with other settings: P2PSampler says which."""
    tensors, metadata = _changed(saved, **changes)
    if "scheduler" in changes:
        tensors["sigmas"] = tensors["sigmas"] * 1.5  # a scheduler's own levels
    file = written("another.safetensors", tensors=tensors, metadata=metadata)
    with pytest.raises(HostError, match=rf"^P2PSampler: {match}"):
        host.run(loaded_graph(file).prompt(), keep=("p2p",))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_files_are_edited_in_float32(host, saved, written, dtype):
    """A file stored at half precision still matches the schedule it was made for; it is computed in float32."""
    reference = written("full.safetensors", tensors=saved[0], metadata=saved[1])
    half = written("half.safetensors", tensors={k: t.to(dtype) for k, t in saved[0].items()}, metadata=saved[1])
    full_out = host.run(loaded_graph(reference).prompt(), keep=("p2p",))["p2p"][0]["samples"]
    half_out = host.run(loaded_graph(half).prompt(), keep=("p2p",))["p2p"][0]["samples"]
    assert half_out.dtype == torch.float32
    assert (half_out - full_out).abs().max() < 0.05


# --- inversions from another model family ----------------------------------------------------------------------

def _sd15_inversion(g):
    loader = g.node("RandomModelLoader", "sd15", shape="sd15", seed=0, dtype="float32")
    image = g.node("EmptyImage", "image", width=64, height=64, batch_size=1, color=0x3366CC)
    neg = g.node("CLIPTextEncode", "sd15_negative", clip=loader.out(1), text="")
    return g.node("P2PInvert", "invert", model=loader.out(0), vae=loader.out(2), image=image, negative=neg, steps=4,
                  cfg=5.0, scheduler="normal", method="direct", **NULL_TEXT, clip=loader.out(1), source_prompt=SOURCE)


@pytest.mark.parametrize("target, match", [
    ("sd3", r"was made with a model of 4 latent channels; this model has 16"),
    ("sdxl", r"was made with a model whose latents are SD15's; this model's are SDXL's"),
    ("demo", r"was made with a model whose latents are SD15's; this model's are ShapesDemo's"),
], ids=["other_channels", "other_latent_format", "same_channels_other_format"])
def test_an_inversion_from_another_model_family_blames_the_inversion(host, target, match):
    """Not the steps or the scheduler in use (here also different from the inversion's)."""
    g = Graph()
    invert = _sd15_inversion(g)
    if target == "demo":
        model, clip = g.node("P2PDemoModel", "model").outputs(2)
    else:
        model, clip = g.node("RandomModelLoader", "model", shape=target, seed=0, dtype="float32").outputs(2)
    neg = g.node("CLIPTextEncode", "negative", clip=clip, text="")
    edit = g.node("P2PEditSpec", "edit", clip=clip, source_prompt=SOURCE, target_prompt=TARGET, mode="auto",
                  cross_replace=0.8, self_replace=0.4, self_layers="coarse", word_schedule="")
    g.node("P2PSampler", "p2p", model=model, edit=edit, negative=neg, seed=0, steps=6, cfg=5.0,
           sampler_name="euler", scheduler="karras", denoise=1.0, inversion=invert.out(0))
    with pytest.raises(HostError, match=rf"^P2PSampler: input 'inversion': {match}"):
        host.run(g.prompt(), keep=("p2p",))


# --- non-finite inputs -----------------------------------------------------------------------------------------

class NonFiniteImage:
    """Test node: the demo scene with one pixel set to `value` (NaN or infinite)."""

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "render"
    CATEGORY = "prompt_to_prompt/dev"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("STRING", {"default": "nan"})}}

    def render(self, value):
        (image,) = RenderedScene().render(12.0, PICTURE_SIZE)
        image = image.clone()
        image[0, 5, 5, 1] = float(value)
        return (image,)


@pytest.mark.parametrize("node_id, changes, match", [
    ("invert", {"cfg": NAN}, r"P2PInvert: input 'cfg': is nan; it must be a finite number"),
    ("invert", {"learning_rate": NAN}, r"P2PInvert: input 'learning_rate': is nan"),
    ("invert", {"early_stop": NAN}, r"P2PInvert: input 'early_stop': is nan"),
    ("invert", {"scheduler": "kl_optimal", "steps": 1}, r"P2PInvert: input 'scheduler': 'kl_optimal' gives no "
                                                         r"usable noise levels for 1 steps"),
    ("p2p", {"cfg": NAN}, r"P2PSampler: input 'cfg': is nan; it must be a finite number"),
    ("p2p", {"denoise": NAN}, r"P2PSampler: input 'denoise': is nan"),
    ("p2p", {"cfg": float("inf")}, r"cfg"),  # ComfyUI's own range check refuses it first
], ids=["invert_cfg", "invert_learning_rate", "invert_early_stop", "invert_nan_schedule", "sampler_cfg",
        "sampler_denoise", "sampler_cfg_inf"])
def test_non_finite_numbers_are_refused(host, node_id, changes, match):
    g = demo_graph("null_text", steps=STEPS, cfg=CFG, inner_steps=2)
    g.nodes[node_id].inputs.update(changes)
    with pytest.raises(HostError, match=match):
        host.run(g.prompt(), keep=("p2p", "invert"))


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_an_image_with_non_finite_pixels_is_refused(host, value):
    host.register({"P2PTestNonFiniteImage": NonFiniteImage})
    g = demo_graph("direct", steps=STEPS)
    g.nodes["invert"].inputs["image"] = g.node("P2PTestNonFiniteImage", "bad_image", value=value).out(0)
    with pytest.raises(HostError, match=r"^P2PInvert: input 'image': holds NaN or infinite values"):
        host.run(g.prompt(), keep=("p2p", "invert"))


# --- saving ----------------------------------------------------------------------------------------------------

def test_a_long_prefix_is_cut_to_a_name_the_file_system_takes(host, folder):
    g = demo_graph("direct", steps=STEPS)
    g.node("P2PSaveInversion", "save", inversion=g.nodes["invert"].out(0), filename_prefix="é" + "a" * 300)
    host.run(g.prompt())
    saved = [e for e in host.server.of("executed") if e["node"] == "save"][0]["output"]["text"][0]
    name = saved.split("/")[1]
    (folder / name).unlink()
    assert name.startswith("a" * 80 + "_") and len(name.encode()) < 255


def test_a_folder_that_cannot_be_written_is_reported_without_the_servers_path(host, folder):
    aside = folder.with_name("p2p_inversions_aside")
    folder.rename(aside)
    folder.write_text("a file where the folder should be")
    try:
        g = demo_graph("direct", steps=STEPS)
        g.node("P2PSaveInversion", "save", inversion=g.nodes["invert"].out(0), filename_prefix="blocked")
        with pytest.raises(HostError, match=r"^P2PSaveInversion: input 'filename_prefix': cannot write "
                                            r"output/p2p_inversions/blocked_#####\.safetensors: File exists") as error:
            host.run(g.prompt())
        assert str(folder.parent) not in str(error.value)
    finally:
        folder.unlink()
        aside.rename(folder)


def test_a_schedule_without_usable_noise_levels_is_refused_by_the_sampler(host):
    """kl_optimal at 1 step gives NaN noise levels; without an inversion too, no NaN picture comes back."""
    from p2p_graphs import p2p_graph

    g, _ = p2p_graph(scheduler="kl_optimal", steps=1)
    with pytest.raises(HostError, match=r"^P2PSampler: input 'scheduler': 'kl_optimal' gives no usable noise levels"):
        host.run(g.prompt(), keep=("p2p",))
