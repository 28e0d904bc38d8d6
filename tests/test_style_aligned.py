"""P2P Style Aligned through ComfyUI's own executor: the reference item is the stock KSampler's picture bit for
bit, the other items attend to it, each conditioning chunk shares with its own reference however the host splits
them, a given picture can be the reference, other packs' patches keep working, and bad inputs name their input."""

import re
from typing import Any

import pytest
import torch

from p2p import SharedAttentionSpec
from p2p_graphs import Recorder, p2p_graph, relative_error, samples
from tools.graph import Graph

PROMPTS = ("a red striped circle on a black background", "a small square", "a big triangle on the left")
SPEC = SharedAttentionSpec()  # the node's defaults
DEFAULTS: dict[str, Any] = {"layers": SPEC.layers, "adain": SPEC.adain, "key_scale": SPEC.key_scale,
                            "reference_weight": SPEC.reference_weight, "share_items": ""}
NULL_TEXT = {"inner_steps": 10, "early_stop": 1e-5, "learning_rate": 1e-2}


@pytest.fixture(scope="module", autouse=True)
def recorder(host):
    host.register({"P2PTestRecorder": Recorder})


def style_graph(*, shape="sd15", cfg=5.0, sampler="euler", prompts=PROMPTS, fixed_noise=False, before=None,
                steps=4, size=128, **style):
    """Random model -> [before] -> P2PStyleAligned -> KSampler "styled", and the same KSampler on the model
    without it ("plain"), on one latent batch with a prompt per item."""
    g = Graph()
    loader = g.node("RandomModelLoader", "loader", shape=shape, seed=0, dtype="float32")
    model = loader.out(0) if before is None else before(g, loader.out(0))
    positive = g.node("P2PPromptBatch", "prompts", clip=loader.out(1), prompts="\n".join(prompts))
    negative = g.node("CLIPTextEncode", "negative", clip=loader.out(1), text="")
    latent = g.node("EmptyLatentImage", "latent", width=size, height=size, batch_size=len(prompts))
    if fixed_noise:  # every item from the same noise
        latent = g.node("LatentBatchSeedBehavior", "fixed", samples=latent, seed_behavior="fixed")
    styled = g.node("P2PStyleAligned", "style", model=model, **{**DEFAULTS, **style})
    for node_id, m in (("styled", styled), ("plain", model)):
        g.node("KSampler", node_id, model=m, positive=positive, negative=negative, latent_image=latent, seed=1,
               steps=steps, cfg=cfg, sampler_name=sampler, scheduler="normal", denoise=1.0)
    return g


def run(host, g, *extra):
    return host.run(g.prompt(), keep=("styled", "plain", *extra))


@pytest.mark.parametrize(("shape", "sampler", "cfg"), [
    ("sd15", "euler", 5.0), ("sd15", "dpmpp_2m", 1.0), ("sdxl", "euler", 5.0),
], ids=["sd15-cfg", "sd15-one-chunk", "sdxl"])
def test_the_reference_is_the_stock_picture_and_the_others_change(host, shape, sampler, cfg):
    out = run(host, style_graph(shape=shape, sampler=sampler, cfg=cfg))
    styled, plain = samples(out, "styled"), samples(out, "plain")
    assert torch.equal(styled[0], plain[0])
    for item in (1, 2):
        assert relative_error(styled[item], plain[item]) > 1e-3, f"item {item} should take the reference's style"


@pytest.mark.parametrize(("adain", "tolerance"), [("off", 1e-5), ("queries+keys+values", 1e-3)])
def test_items_that_are_the_reference_attend_as_they_would_alone(host, adain, tolerance):
    """One prompt, one noise: each item attends over [its keys; the reference's] = its own keys twice, which is
    its own attention; AdaIN to its own statistics changes nothing either (up to the 1e-5 in the spread)."""
    out = run(host, style_graph(prompts=PROMPTS[:1] * 3, fixed_noise=True, adain=adain))
    styled, plain = samples(out, "styled"), samples(out, "plain")
    assert relative_error(plain[1], plain[0]) < 1e-6  # the items really are one picture (up to rounding)
    assert relative_error(styled[1:], plain[1:]) < tolerance


def test_a_reference_weight_of_0_without_adain_is_plain_attention(host):
    out = run(host, style_graph(reference_weight=0.0, adain="off"))
    assert relative_error(samples(out, "styled"), samples(out, "plain")) < 1e-5


def test_only_the_named_items_share(host):
    out = run(host, style_graph(share_items="2"))
    styled, plain = samples(out, "styled"), samples(out, "plain")
    assert torch.equal(styled[:2], plain[:2])
    assert relative_error(styled[2], plain[2]) > 1e-3


@pytest.mark.parametrize("reference_weight", [1.0, 2.0])
def test_split_chunks_share_with_their_own_reference(host, reference_weight):
    """ComfyUI evaluates the positive and the negative in one call or in two (when memory is short): the
    unconditional rows share with the unconditional reference either way, so the pictures agree."""
    def split(g, model):
        return g.node("P2PTestRecorder", "rec", model=model, key="split", what="split_chunks").out(0)

    g = style_graph(reference_weight=reference_weight)
    g.node("P2PStyleAligned", "style_split", model=split(g, g.nodes["loader"].out(0)),
           **{**DEFAULTS, "reference_weight": reference_weight})
    g.node("KSampler", "styled_split", **{**g.nodes["styled"].inputs, "model": g.nodes["style_split"].out(0)})
    out = run(host, g, "styled_split")
    assert Recorder.RECORDS["split"], "the chunks should have been evaluated apart"
    assert relative_error(samples(out, "styled_split"), samples(out, "styled")) < 1e-4
    assert relative_error(samples(out, "styled")[1], samples(out, "plain")[1]) > 1e-3


def test_under_the_p2p_sampler_the_source_is_the_reference(host):
    def styled(g, model):
        return g.node("P2PStyleAligned", "style", model=model, **DEFAULTS).out(0)

    g, n = p2p_graph(model_node=styled)
    g.node("P2PSampler", "unstyled", **{**n["p2p"].inputs, "model": n["loader"].out(0)})
    out = host.run(g.prompt(), keep=("p2p", "unstyled"))
    p2p, unstyled = samples(out, "p2p"), samples(out, "unstyled")
    assert torch.equal(p2p[0], unstyled[0])
    # the edit already shares the source's layout, so taking its style too changes it less than a free item
    assert relative_error(p2p[1], unstyled[1]) > 1e-4


@pytest.mark.parametrize("what", ["additive_attn1", "pag"])
def test_other_patches_keep_working(host, what):
    """An attn1 replace set before (IPAdapter-like, additive) still adds its term to every row, and PAG (set at
    sampling time) still guides: the reference is the stock picture with that patch alone."""
    def before(g, model):
        if what == "pag":
            return g.node("PerturbedAttentionGuidance", "other", model=model, scale=3.0).out(0)
        return g.node("P2PTestRecorder", "other", model=model, key="prior", what=what).out(0)

    g = style_graph(before=before)
    g.node("KSampler", "bare", **{**g.nodes["plain"].inputs, "model": g.nodes["loader"].out(0)})
    g.node("P2PStyleAligned", "style_bare", model=g.nodes["loader"].out(0), **DEFAULTS)
    g.node("KSampler", "styled_bare", **{**g.nodes["plain"].inputs, "model": g.nodes["style_bare"].out(0)})
    out = run(host, g, "bare", "styled_bare")
    styled, plain = samples(out, "styled"), samples(out, "plain")
    assert relative_error(plain[0], samples(out, "bare")[0]) > 1e-3, "the other patch should change the picture"
    assert torch.equal(styled[0], plain[0])
    assert relative_error(styled[1], samples(out, "styled_bare")[1]) > 1e-3, "the other patch should still count"
    assert relative_error(styled[1], plain[1]) > 1e-3


def _inversion(g, loader, size=128):
    image = g.node("EmptyImage", "scene", width=size, height=size, batch_size=1, color=0x3366CC)
    return g.node("P2PInvert", "invert", model=loader.out(0), vae=loader.out(2), image=image,
                  negative=g.nodes["negative"], steps=4, cfg=5.0, scheduler="normal", method="direct", **NULL_TEXT,
                  clip=loader.out(1), source_prompt=PROMPTS[0])


def test_an_inverted_picture_as_the_reference_comes_out_as_its_reconstruction(host):
    g = style_graph()
    loader = g.nodes["loader"]
    g.nodes["style"].inputs["reference_inversion"] = _inversion(g, loader)
    out = run(host, g, "invert", "loader")
    styled, plain = samples(out, "styled"), samples(out, "plain")
    path = out["invert"][0].inversion.trajectory
    reconstruction = out["loader"][0].model.process_latent_out(path[-1:])[0]
    assert relative_error(styled[0], reconstruction) < 1e-5
    assert relative_error(styled[1], plain[1]) > 1e-3


def test_a_latent_as_the_reference_comes_out_as_itself(host):
    g = style_graph()
    loader = g.nodes["loader"]
    image = g.node("EmptyImage", "image", width=128, height=128, batch_size=1, color=0xCC3366)
    encoded = g.node("VAEEncode", "encoded", pixels=image, vae=loader.out(2))
    g.nodes["style"].inputs["reference_latent"] = encoded
    out = run(host, g, "encoded")
    styled = samples(out, "styled")
    assert relative_error(styled[0], samples(out, "encoded")[0]) < 1e-5
    assert relative_error(styled[1], samples(out, "plain")[1]) > 1e-3


def _error(host, g, node="styled"):
    from tools.host import HostError

    with pytest.raises(HostError) as caught:
        host.run(g.prompt(), keep=(node,))
    return str(caught.value)


def _with_encoded(g, width=128, batch=1):
    image = g.node("EmptyImage", "image", width=width, height=128, batch_size=batch, color=0xCC3366)
    return g.node("VAEEncode", "encoded", pixels=image, vae=g.nodes["loader"].out(2))


@pytest.mark.parametrize(("case", "message"), [
    ("share_items", r"P2PStyleAligned: input 'share_items': \"two\" is not an item number"),
    ("share_item_0", r"P2PStyleAligned: input 'share_items': item 0 is the reference"),
    ("both", r"P2PStyleAligned: input 'reference_latent': connect a reference_inversion or a reference_latent"),
    ("latent_batch", r"P2PStyleAligned: input 'reference_latent': needs one latent \(a batch of 1\), got 2"),
    ("latent_size", r"P2PStyleAligned: input 'reference_latent': is a 4-channel 8x16 latent; the batch being "
                    r"sampled is 4-channel 16x16"),
    ("inversion_size", r"P2PStyleAligned: input 'reference_inversion': is a 4-channel 8x8 latent"),
    ("flux", r"P2PStyleAligned: input 'model': Flux models .* are not supported yet"),
])
def test_bad_inputs_name_the_input(host, case, message):
    g = style_graph(shape="flux" if case == "flux" else "sd15")
    style = g.nodes["style"].inputs
    if case == "share_items":
        style["share_items"] = "1, two"
    elif case == "share_item_0":
        style["share_items"] = "0-2"
    elif case == "both":
        style["reference_latent"] = _with_encoded(g)
        style["reference_inversion"] = _inversion(g, g.nodes["loader"])
    elif case == "latent_batch":
        style["reference_latent"] = _with_encoded(g, batch=2)
    elif case == "latent_size":
        style["reference_latent"] = _with_encoded(g, width=64)
    elif case == "inversion_size":
        style["reference_inversion"] = _inversion(g, g.nodes["loader"], size=64)
    text = _error(host, g)
    assert re.search(message, text), text


def test_a_reference_picture_is_refused_under_the_p2p_sampler(host):
    def styled(g, model):
        encoded = _with_encoded(g)
        return g.node("P2PStyleAligned", "style", model=model, reference_latent=encoded, **DEFAULTS).out(0)

    g, n = p2p_graph(model_node=styled)
    text = _error(host, g, node="p2p")
    assert "P2PSampler: input 'model': carries a P2P Style Aligned patch whose reference comes from its " \
           "reference_latent" in text, text
