"""P2PInvert, P2PSampler with an inversion, and saving/loading inversions, through ComfyUI's own executor:
on the trained demo model (rendered scenes it did not generate) and on a tiny random SD1.5-shaped model."""

from typing import Any

import numpy as np
import pytest
import torch

from shapes_demo import metrics
from shapes_demo.autoencoder import PICTURE_SIZE
from shapes_demo.world import Obj, Scene, render
from tools.graph import Graph
from tools.host import HostError

SOURCE = "a big red circle"
TARGET = "a big blue circle"
NULL_TEXT = {"inner_steps": 10, "early_stop": 1e-5, "learning_rate": 1e-2}


class RenderedScene:
    """Test node: a picture of the shapes world (a red circle, placed by `x`), as a ComfyUI IMAGE."""

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "render"
    CATEGORY = "prompt_to_prompt/dev"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"x": ("FLOAT", {"default": 12.0}), "size": ("INT", {"default": PICTURE_SIZE})}}

    def render(self, x, size):
        return (torch.from_numpy(scene_picture(x, size))[None],)


def scene_picture(x: float = 12.0, size: int = PICTURE_SIZE) -> np.ndarray:
    """[size, size, 3] in 0..1: a big red circle at `x` (in the world's 32 units) on white."""
    scene = Scene((Obj("circle", "red", "big", 7.0, x, 15.0, None),), "white")
    image, _ = render(scene, supersample=2, size=size)
    return image


@pytest.fixture(scope="module", autouse=True)
def test_nodes(host):
    host.register({"P2PTestRenderedScene": RenderedScene})


def demo_graph(method="direct", steps=12, cfg=5.0, sampler="euler", inversion_steps=None, x=12.0,
               size=PICTURE_SIZE, **knobs):
    g = Graph()
    model = g.node("P2PDemoModel", "model")
    image = g.node("P2PTestRenderedScene", "image", x=x, size=size)
    neg = g.node("CLIPTextEncode", "negative", clip=model.out(1), text="")
    inversion_inputs: dict[str, Any] = {**NULL_TEXT, **knobs}  # P2PInvert's inputs, never Graph.node's own
    invert = g.node("P2PInvert", "invert", model=model.out(0), vae=model.out(2), image=image, negative=neg,
                    steps=inversion_steps or steps, cfg=cfg, scheduler="normal", method=method,
                    **inversion_inputs, clip=model.out(1), source_prompt=SOURCE)
    edit = g.node("P2PEditSpec", "edit", clip=model.out(1), source_prompt=SOURCE, target_prompt=TARGET, mode="auto",
                  cross_replace=0.8, self_replace=0.4, self_layers="coarse", word_schedule="")
    g.node("P2PSampler", "p2p", model=model.out(0), edit=edit, negative=neg, seed=0, steps=steps, cfg=cfg,
           sampler_name=sampler, scheduler="normal", denoise=1.0, inversion=invert.out(0))
    return g


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return metrics.psnr(a.numpy(), b.numpy(), np.ones(a.shape[:2], bool))


def test_direct_source_is_the_inverted_image_exactly(host, pack):
    g = demo_graph("direct")
    out = host.run(g.prompt(), keep=("p2p", "invert", "model"))
    inversion, reconstruction = out["invert"]
    model, _, vae = out["model"]
    source = out["p2p"][0]["samples"][0]
    expected = model.model.process_latent_out(inversion.inversion.trajectory[-1:])[0]
    assert torch.equal(source, expected)  # the end of the path: the encoded image, bit for bit
    assert psnr(torch.from_numpy(scene_picture()), reconstruction[0]) > 28  # the autoencoder's loss (MODEL.md)
    assert inversion.passes == 12  # one plain DDIM inversion


@pytest.mark.parametrize("method, cfg, floor", [("ddim", 1.0, 24.0), ("negative_prompt", 5.0, 24.0),
                                                ("null_text", 5.0, 22.0)])  # 23.8 at 12 steps
def test_methods_round_trip_as_they_promise(host, method, cfg, floor):
    """The source item regenerates the image (within the method's tolerance), and the reconstruction that
    P2PInvert previews is what P2PSampler regenerates."""
    g = demo_graph(method, cfg=cfg)
    g.node("VAEDecode", "decode", samples=g.nodes["p2p"].out(0), vae=g.nodes["model"].out(2))
    out = host.run(g.prompt(), keep=("decode", "invert"))
    images, (inversion, reconstruction) = out["decode"][0], out["invert"]
    assert psnr(torch.from_numpy(scene_picture()), images[0]) > floor
    assert psnr(reconstruction[0], images[0]) > 45
    assert inversion.inversion.method == method


def test_null_text_beats_ddim_at_the_same_guidance(host):
    scores = {}
    for method in ("ddim", "null_text"):
        out = host.run(demo_graph(method, cfg=5.0).prompt(), keep=("invert",))
        scores[method] = psnr(torch.from_numpy(scene_picture()), out["invert"][1][0])
    assert scores["null_text"] > scores["ddim"], scores


def test_save_then_load_gives_identical_edits(host):
    g = demo_graph("null_text", steps=6)
    g.node("P2PSaveInversion", "save", inversion=g.nodes["invert"].out(0), filename_prefix="../te st/inv")
    first = host.run(g.prompt(), keep=("p2p",))["p2p"][0]["samples"]
    saved = [e for e in host.server.of("executed") if e["node"] == "save"][0]["output"]["text"][0]
    assert saved.startswith("p2p_inversions/te_st_inv_") and ".." not in saved
    file = saved.split("/", 1)[1]
    g2 = demo_graph("null_text", steps=6)
    g2.nodes["p2p"].inputs["inversion"] = g2.node("P2PLoadInversion", "load", file=file).out(0)
    second = host.run(g2.prompt(), keep=("p2p",))["p2p"][0]["samples"]
    assert torch.equal(first, second)


def test_cancelling_an_inversion_leaves_the_next_run_unaffected(host):
    import comfy.utils

    reference = host.run(demo_graph("null_text", steps=6).prompt(), keep=("p2p",))["p2p"][0]["samples"]

    def cancel_midway(value, total, preview, prompt_id=None, node_id=None):
        if value >= 3:
            host.interrupt()
        host._progress(value, total, preview, prompt_id, node_id)

    comfy.utils.set_progress_bar_global_hook(cancel_midway)
    try:
        with pytest.raises(HostError):
            host.run(demo_graph("null_text", steps=6, x=13.0).prompt(), keep=("p2p",))
    finally:
        comfy.utils.set_progress_bar_global_hook(host._progress)
    again = host.run(demo_graph("null_text", steps=6).prompt(), keep=("p2p",))["p2p"][0]["samples"]
    cached = [n for e in host.server.of("execution_cached") for n in e.get("nodes", [])]
    assert "invert" not in cached  # recomputed after the cancelled run, not taken from the cache
    assert torch.equal(reference, again)


def test_a_tiny_sd15_model_round_trips_with_direct_and_null_text(host):
    """eps-prediction, a 4-channel latent VAE, an odd-sized picture cropped to the model's size step."""
    for method in ("direct", "null_text"):
        g = Graph()
        loader = g.node("RandomModelLoader", "loader", shape="sd15", seed=0, dtype="float32")
        image = g.node("EmptyImage", "image", width=70, height=100, batch_size=1, color=0x3366CC)
        neg = g.node("CLIPTextEncode", "negative", clip=loader.out(1), text="")
        invert = g.node("P2PInvert", "invert", model=loader.out(0), vae=loader.out(2), image=image, negative=neg,
                        steps=4, cfg=5.0, scheduler="normal", method=method, inner_steps=2, early_stop=1e-5,
                        learning_rate=1e-2, clip=loader.out(1), source_prompt="a blue wall")
        edit = g.node("P2PEditSpec", "edit", clip=loader.out(1), source_prompt="a blue wall",
                      target_prompt="a red wall", mode="auto", cross_replace=0.8, self_replace=0.4,
                      self_layers="coarse", word_schedule="")
        g.node("P2PSampler", "p2p", model=loader.out(0), edit=edit, negative=neg, seed=0, steps=4, cfg=5.0,
               sampler_name="euler", scheduler="normal", denoise=1.0, inversion=invert.out(0))
        out = host.run(g.prompt(), keep=("p2p", "invert", "loader"))
        inversion = out["invert"][0].inversion
        assert inversion.trajectory.shape[1:] == (4, 12, 8)  # 100x70 cropped to 96x64, latent / 8
        latent = out["p2p"][0]["samples"]
        assert latent.shape == (2, 4, 12, 8)
        if method == "direct":
            model = out["loader"][0]
            assert torch.equal(latent[0], model.model.process_latent_out(inversion.trajectory[-1:])[0])


@pytest.mark.parametrize("change, match", [
    ({"sampler": "euler_ancestral"}, r"P2PSampler: input 'sampler_name': euler_ancestral adds fresh noise"),
    ({"inversion_steps": 10}, r"P2PSampler: input 'steps': the inversion was made with 10 steps"),
    ({"size": 2}, r"P2PInvert: input 'image': is 2x2, smaller than this model's smallest size \(32x32\)"),
])
def test_bad_inversion_inputs_name_the_input(host, change, match):
    with pytest.raises(HostError, match=match):
        host.run(demo_graph("direct", **change).prompt(), keep=("p2p",))


def test_null_text_needs_its_own_guidance(host):
    g = demo_graph("null_text", steps=4)
    g.nodes["p2p"].inputs["cfg"] = 3.0
    with pytest.raises(HostError, match=r"P2PSampler: input 'cfg': must be 5"):
        host.run(g.prompt(), keep=("p2p",))


def test_missing_prompt_and_double_start_are_refused(host):
    g = demo_graph("direct", steps=4)
    g.nodes["invert"].inputs["source_prompt"] = ""
    with pytest.raises(HostError, match=r"P2PInvert: input 'source_prompt': connect an edit, or a clip"):
        host.run(g.prompt(), keep=("p2p",))
    g = demo_graph("direct", steps=4)
    g.nodes["p2p"].inputs["latent_image"] = g.node("EmptyLatentImage", "latent", width=PICTURE_SIZE,
                                                   height=PICTURE_SIZE, batch_size=1)
    with pytest.raises(HostError, match=r"P2PSampler: input 'latent_image': connect either"):
        host.run(g.prompt(), keep=("p2p",))


def guided_inversion(g, sampler="euler", sigmas=None):
    """SamplerCustomAdvanced with a P2PGuider over the P2P sampler's model, edit, negative, cfg and inversion."""
    p2p = g.nodes["p2p"].inputs
    guider = g.node("P2PGuider", "guider", model=p2p["model"], edit=p2p["edit"], negative=p2p["negative"],
                    cfg=p2p["cfg"], inversion=p2p["inversion"])
    sigmas = sigmas or g.node("BasicScheduler", "sigmas", model=p2p["model"], scheduler="normal",
                              steps=p2p["steps"], denoise=1.0)
    latent = g.node("EmptyLatentImage", "latent", width=PICTURE_SIZE, height=PICTURE_SIZE, batch_size=1)
    select = g.node("KSamplerSelect", "select", sampler_name=sampler)
    return g.node("SamplerCustomAdvanced", "guided", noise=g.node("DisableNoise", "no_noise"), guider=guider,
                  sampler=select, sigmas=sigmas, latent_image=latent)


@pytest.mark.parametrize("method", ["direct", "null_text", "negative_prompt"])
def test_the_guider_edits_an_inversion_as_the_sampler_does(host, method):
    g = demo_graph(method, steps=6)
    guided_inversion(g)
    out = host.run(g.prompt(), keep=("p2p", "guided"))
    assert torch.equal(out["guided"][0]["samples"], out["p2p"][0]["samples"])


def test_the_guider_names_what_cannot_retrace_an_inversion(host):
    g = demo_graph("direct", steps=6)
    guided_inversion(g, sampler="euler_ancestral")
    with pytest.raises(HostError, match=r"^P2PGuider: input 'sampler': euler_ancestral adds fresh noise"):
        host.run(g.prompt(), keep=("guided",))
    g = demo_graph("direct", steps=6)
    karras = g.node("KarrasScheduler", "karras", steps=6, sigma_max=14.6, sigma_min=0.03, rho=7.0)
    guided_inversion(g, sigmas=karras)
    with pytest.raises(HostError, match=r"^P2PGuider: input 'sigmas': are not the schedule the inversion was made "
                       r"with \(the 'normal' scheduler over 6 steps"):
        host.run(g.prompt(), keep=("guided",))
