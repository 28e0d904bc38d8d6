"""P2PSampler and P2PGuider on Flux, Chroma and SD3 (tiny random models from ComfyUI's classes, with ComfyUI's real
T5 and CLIP tokenizers), through ComfyUI's own executor: the source is the stock sampler's picture, the edit keeps the
source's structure by taking its image queries and keys inside the self window (Shin et al., ICCV 2025), and what
the pack does not do on these models yet is refused naming the input."""

import dataclasses

import pytest
import torch

from p2p_graphs import BATCH_ROUNDING, add_guided_run, add_sigmas, relative_error, samples
from tools.graph import Graph
from tools.host import HostError

SOURCE = "a red circle on the left"
TARGET = "a blue circle on the left"
CFG = {"flux": 1.0, "chroma": 4.0, "sd3": 4.0}  # Flux.1-dev is guidance-distilled: cfg 1
FAMILIES = list(CFG)


def dit_graph(family, source=SOURCE, target=TARGET, sampler="euler", self_replace=0.4, steps=6, cross_replace=0.8):
    """Random Flux/Chroma -> P2PEditSpec -> P2PSampler, and the stock KSampler on the source prompt at the same
    batch ("plain")."""
    g = Graph()
    loader = g.node("RandomModelLoader", "loader", shape=family, seed=0, dtype="float32")
    model, clip = loader.out(0), loader.out(1)
    edit = g.node("P2PEditSpec", "edit", clip=clip, source_prompt=source, target_prompt=target, mode="auto",
                  cross_replace=cross_replace, self_replace=self_replace, self_layers="coarse", word_schedule="")
    negative = g.node("CLIPTextEncode", "negative", clip=clip, text="")
    latent = g.node("EmptySD3LatentImage", "latent", width=64, height=64, batch_size=1)
    p2p = g.node("P2PSampler", "p2p", model=model, edit=edit, negative=negative, latent_image=latent, seed=1,
                 steps=steps, cfg=CFG[family], sampler_name=sampler, scheduler="simple", denoise=1.0)
    positive = g.node("CLIPTextEncode", "positive", clip=clip, text=source)
    batch = g.node("RepeatLatentBatch", "batch", samples=latent, amount=2)
    g.node("KSampler", "plain", model=model, positive=positive, negative=negative, latent_image=batch, seed=1,
           steps=steps, cfg=CFG[family], sampler_name=sampler, scheduler="simple", denoise=1.0)
    return g, {"loader": loader, "model": model, "clip": clip, "edit": edit, "negative": negative, "latent": latent,
               "p2p": p2p}



@pytest.mark.parametrize("family", FAMILIES)
def test_the_source_is_the_stock_sampler_picture(host, family):
    """Bit for bit at the same batch; the edit differs. With Chroma's real CFG the unconditional rows are untouched
    (otherwise the source would differ)."""
    g, _ = dit_graph(family)
    out = host.run(g.prompt(), keep=("p2p", "plain"))
    p2p, plain = samples(out, "p2p"), samples(out, "plain")
    assert torch.equal(p2p[0], plain[0])
    assert relative_error(p2p[1], p2p[0]) > 1e-3


@pytest.mark.parametrize("family", FAMILIES)
def test_with_an_ancestral_sampler_the_source_is_a_single_stock_run(host, family):
    """The per-step noise is drawn as for one latent and shared, so the source matches the stock sampler on one
    latent, to the backend's batch rounding."""
    g, _ = dit_graph(family, sampler="euler_ancestral")
    g.nodes["plain"].inputs["latent_image"] = g.nodes["latent"]
    out = host.run(g.prompt(), keep=("p2p", "plain"))
    assert relative_error(samples(out, "p2p")[0], samples(out, "plain")[0]) < BATCH_ROUNDING


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("cross_replace", [0.0, 1.0])
def test_identical_prompts_with_full_windows_reproduce_the_source(host, family, cross_replace):
    """Bit for bit where only the self window is on; inside the cross window the edit's rows come from PyTorch's
    fused attention and the source's from the host's (ComfyUI's sub-quadratic attention on this CPU), so to their
    rounding, as on UNets."""
    g, _ = dit_graph(family, target=SOURCE, self_replace=1.0, cross_replace=cross_replace)
    out = samples(host.run(g.prompt(), keep=("p2p",)), "p2p")
    if cross_replace == 0.0:
        assert torch.equal(out[1], out[0])
    assert relative_error(out[1], out[0]) < 1e-4


class JointRecorder:
    """A MODEL -> MODEL test node: an attention override set before P2P (as another pack would set one), which
    records, per joint attention call of our batch, whether the edit row's image queries and keys are the source's
    and whether its text queries are. P2P chains it, so it sees the arguments after injection."""

    RECORDS: list = []
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "patch"
    CATEGORY = "prompt_to_prompt/dev"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "text_tokens": ("INT", {"default": 0})}}

    @classmethod
    def IS_CHANGED(cls, **_):
        return float("nan")

    def patch(self, model, text_tokens):
        records = self.RECORDS
        records.clear()

        def override(func, *args, **kwargs):
            q, k = args[0], args[1]
            chunks = (kwargs.get("transformer_options") or {}).get("cond_or_uncond") or []
            axis = 2 if kwargs.get("skip_reshape") else 1  # Flux [B, H, L, d]; SD3 [B, L, H * d]
            if 0 in chunks and q.shape[0] == 2 * len(chunks) and q.shape[axis] > text_tokens:
                source = 2 * chunks.index(0)
                image = (slice(None),) * (axis - 1) + (slice(text_tokens, None),)
                text = (slice(None),) * (axis - 1) + (slice(None, text_tokens),)
                records.append({
                    "sigma": float(kwargs["transformer_options"]["sigmas"].max()),
                    "image": all(torch.equal(x[(source + 1, *image)], x[(source, *image)]) for x in (q, k)),
                    "text": torch.equal(q[(source + 1, *text)], q[(source, *text)]),
                })
            return func(*args, **kwargs)

        m = model.clone()
        m.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = override
        return (m,)


@pytest.mark.parametrize("family, text_tokens, calls", [("flux", 256, 4), ("sd3", 154, 3)])
def test_inside_the_self_window_the_edit_takes_the_source_image_queries_and_keys(host, family, text_tokens, calls):
    """6 steps, self_replace 0.5: steps 1-3 inject and 4-6 do not; the edit's text tokens (another prompt) are
    always its own. Flux (cfg 1, [B, H, L, d], 2 double + 2 single blocks) and SD3 (cfg 4, [B, L, H * d], 3 joint
    blocks; 77 CLIP + 77 T5 text tokens)."""
    host.register({"P2PTestJointRecorder": JointRecorder})
    g, n = dit_graph(family, self_replace=0.5, cross_replace=0.0)  # inside the cross window the pack computes the
    # edit's rows itself (an override set before it sees the other rows only)
    g.node("P2PTestJointRecorder", "recorder", model=n["model"], text_tokens=text_tokens)
    n["p2p"].inputs["model"] = g.nodes["recorder"]
    host.run(g.prompt(), keep=("p2p",))
    records = JointRecorder.RECORDS
    sigmas = sorted({r["sigma"] for r in records}, reverse=True)
    assert len(sigmas) == 6 and len(records) == 6 * calls
    inside = [r for r in records if r["sigma"] in sigmas[:3]]
    outside = [r for r in records if r["sigma"] in sigmas[3:]]
    assert all(r["image"] for r in inside)
    assert not all(r["image"] for r in outside)
    assert not any(r["text"] for r in records)


def test_the_guider_gives_the_sampler_batch_on_flux(host):
    g, n = dit_graph("flux")
    add_guided_run(g, n, add_sigmas(g, n, "basic"))
    out = host.run(g.prompt(), keep=("p2p", "guided"))
    assert torch.equal(samples(out, "guided"), samples(out, "p2p"))


def test_the_model_is_left_unchanged(host):
    g, _ = dit_graph("flux")
    out = host.run(g.prompt(), keep=("p2p", "loader"))
    model = out["loader"][0]
    assert "optimized_attention_override" not in model.model_options.get("transformer_options", {})


def with_reweight(g, n, weights="blue: 3"):
    n["p2p"].inputs["edit"] = g.node("P2PReweight", "reweight", edit=n["edit"], weights=weights)


def with_schedule(g, n):
    n["p2p"].inputs["edit"] = g.node("P2PEditSpec", "scheduled", **{**n["edit"].inputs, "word_schedule": "blue: 0.2"})


def with_blend(g, n):
    """threshold 0.99: a random model's word maps on a 4x4 grid of image tokens are near flat, and the max-pooled
    mask of a lower threshold covers the whole grid"""
    n["p2p"].inputs["edit"] = g.node("P2PLocalBlend", "blend", edit=n["edit"], source_words="red circle",
                                     target_words="blue circle", threshold=0.99, start=0.2)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("change", [with_reweight, with_schedule, with_blend])
def test_word_inputs_change_the_edit_and_leave_the_source(host, family, change):
    """P2P Reweight, word_schedule and P2P Local Blend act on the image-to-text part of the joint attention; the
    source stays the stock picture."""
    g, n = dit_graph(family)
    g.node("P2PSampler", "unchanged", **dict(n["p2p"].inputs))
    change(g, n)
    out = host.run(g.prompt(), keep=("p2p", "plain", "unchanged"))
    p2p, unchanged = samples(out, "p2p"), samples(out, "unchanged")
    assert torch.equal(p2p[0], samples(out, "plain")[0])
    assert relative_error(p2p[1], unchanged[1]) > 1e-4


@pytest.mark.parametrize("family", FAMILIES)
def test_a_local_blend_keeps_the_source_outside_its_mask(host, family):
    g, n = dit_graph(family)
    with_blend(g, n)
    out = host.run(g.prompt(), keep=("p2p",))
    p2p, masks = samples(out, "p2p"), out["p2p"][1].maps.blend_masks
    (mask,) = masks
    assert mask is not None and 0 < int(mask.sum()) < mask.numel()
    assert torch.equal(p2p[1][:, ~mask], p2p[0][:, ~mask])
    assert not torch.equal(p2p[1][:, mask], p2p[0][:, mask])


@pytest.mark.parametrize("family, layers", [("flux", 4), ("chroma", 4), ("sd3", 3)])
def test_the_captured_maps_show_the_source_map_in_the_edit_inside_the_window(host, family, layers):
    """A word swap of words of one token each with cross_replace 1: the edit's image-to-text map is the source's
    (the identity mapping), in every joint block (Flux, Chroma: 2 double + 2 single; SD3: 3) and step; with
    cross_replace 0 it is its own. Each image token's map sums to 1 over the text."""
    g, n = dit_graph(family, cross_replace=1.0, self_replace=0.0)
    g.node("P2PSampler", "own", **{**n["p2p"].inputs, "edit": g.node("P2PEditSpec", "own_edit", **{
        **n["edit"].inputs, "cross_replace": 0.0})})
    out = host.run(g.prompt(), keep=("p2p", "own"))
    maps, own = out["p2p"][1].maps, out["own"][1].maps
    assert maps.steps == tuple(range(6)) and maps.layer_count == layers and maps.spatial == (4, 4)
    torch.testing.assert_close(maps.cross[1], maps.cross[0], atol=1e-6, rtol=1e-5)
    assert (own.cross[1] - own.cross[0]).abs().max() > 1e-3
    torch.testing.assert_close(maps.cross[0].sum(-1), torch.ones(4, 4))
    assert maps.self_maps[0].shape == (16, 16)


def test_heatmaps_on_flux_name_the_words(host):
    g, n = dit_graph("flux")
    images = g.node("EmptyImage", "images", width=64, height=64, batch_size=2, color=0)
    g.node("P2PAttentionMaps", "view", attention=n["p2p"].out(1), images=images, item=1, components=4,
           words="blue, circle")
    heatmaps, components = host.run(g.prompt())["view"]
    (executed,) = [e for e in host.server.of("executed") if e["node"] == "view"]
    data = executed["output"]["p2p_attention"][0]
    assert data["items"][1]["words"] == ["blue", "circle"]
    assert heatmaps.shape[0] == 1 and components.shape[0] == 1


@pytest.mark.parametrize("source, target", [(SOURCE, "a big blue circle on the left"),
                                            ("a big red circle on the left", TARGET)])
def test_chroma_prompts_of_other_lengths_attend_over_their_own_tokens(host, source, target):
    """Chroma does not pad its prompts: a refinement's prompts encode to different lengths. The batch pads them to
    the longest, and each row attends over its own tokens, so the source is the stock picture (whether it is the
    shorter or the longer prompt)."""
    g, n = dit_graph("chroma", source=source, target=target)
    g.nodes["positive"].inputs["text"] = source
    out = host.run(g.prompt(), keep=("p2p", "plain"))
    p2p, plain = samples(out, "p2p"), samples(out, "plain")
    assert torch.equal(p2p[0], plain[0])
    assert relative_error(p2p[1], p2p[0]) > 1e-3


def test_flux_guidance_comes_through_positive_as_flux_guidance_sets_it(host):
    """FluxGuidance on a conditioning given to `positive` guides the source and the edit; the source is then the
    stock KSampler's picture with that FluxGuidance (and differs from the default guidance's, 3.5)."""
    g, n = dit_graph("flux")
    guided = g.node("FluxGuidance", "guidance", conditioning=g.nodes["positive"], guidance=1.5)
    g.node("P2PSampler", "default", **dict(n["p2p"].inputs))
    n["p2p"].inputs["positive"] = guided
    g.nodes["plain"].inputs["positive"] = guided
    out = host.run(g.prompt(), keep=("p2p", "plain", "default"))
    p2p = samples(out, "p2p")
    assert torch.equal(p2p[0], samples(out, "plain")[0])
    assert not torch.equal(p2p[0], samples(out, "default")[0])


def test_a_long_sd3_prompt_is_placed_and_reweighted(host):
    """Two CLIP chunks, then a T5 part longer than 77 tokens: the words are found in every part."""
    long = ", ".join([SOURCE] * 20)
    g, n = dit_graph("sd3", source=long, target=long.replace("red", "blue", 1))
    g.nodes["positive"].inputs["text"] = long
    g.node("P2PSampler", "unchanged", **dict(n["p2p"].inputs))
    with_reweight(g, n)
    out = host.run(g.prompt(), keep=("p2p", "plain", "unchanged"))
    p2p = samples(out, "p2p")
    assert torch.equal(p2p[0], samples(out, "plain")[0])
    assert relative_error(p2p[1], samples(out, "unchanged")[1]) > 1e-4


def test_prompts_whose_words_cannot_be_placed_are_edited_without_them(pack):
    """An encoder layout the pack does not read (the prompt's positions are not the conditioning's): word inputs are
    refused naming the input, and prompts of different lengths too."""
    piece = pack.p2p.TokenPiece
    tokens = pack.p2p.PromptTokens("a red circle", (piece(1, "start"), piece(2, "word", "red", True), piece(3, "end"),
                                                    *[piece(3, "pad")] * 74))
    edit = pack.p2p.make_edit(tokens, tokens)
    cond = [[torch.zeros(1, 90, 8), {}]]
    bundle = pack.adapter.bundle.EditBundle(pack.p2p.EditBatch(tokens, (edit.reweighted([(("red",), 2.0)]),)),
                                            (cond, cond), lambda phrase: tuple(phrase.split()))
    check = pack.adapter.sampling._check_joint_run
    with pytest.raises(ValueError, match=r"^P2PSampler: input 'edit': edit 1 uses re-weighting \(P2P Reweight\), "
                                         r"but the pack cannot place the words of these prompts among their 90 text"):
        check("P2PSampler", "SD3", bundle, None)
    longer = [[torch.zeros(1, 91, 8), {}]]
    with pytest.raises(ValueError, match=r"^P2PSampler: input 'edit': its prompts encode to 90 and 91 text tokens"):
        check("P2PSampler", "SD3", dataclasses.replace(bundle, conditionings=(cond, longer)), None)


def inversion_graph(family, method, steps=4, cfg=None):
    """P2PInvert on a flat picture, then P2PSampler edits it (euler, the inversion's own schedule)."""
    cfg = CFG[family] if cfg is None else cfg
    g, n = dit_graph(family, steps=steps)
    image = g.node("EmptyImage", "image", width=64, height=64, batch_size=1, color=0x3366CC)
    vae = n["loader"].out(2)
    invert = g.node("P2PInvert", "invert", model=n["model"], vae=vae, image=image, negative=n["negative"],
                    steps=steps, cfg=cfg, scheduler="simple", method=method, inner_steps=2, early_stop=1e-5,
                    learning_rate=1e-2, clip=n["clip"], source_prompt=SOURCE)
    n["p2p"].inputs.update(inversion=invert.out(0), cfg=cfg)
    del n["p2p"].inputs["latent_image"]
    g.node("VAEDecode", "decode", samples=n["p2p"].out(0), vae=vae)
    return g, n


@pytest.mark.parametrize("family", FAMILIES)
def test_direct_inversion_gives_the_inverted_image_as_the_source(host, family):
    """Plain Euler inversion of a rectified flow; the source item is the encoded picture bit for bit and the edit
    starts from the inverted noise."""
    g, _ = inversion_graph(family, "direct")
    out = host.run(g.prompt(), keep=("p2p", "invert", "loader"))
    inversion, model = out["invert"][0].inversion, out["loader"][0]
    latent = samples(out, "p2p")
    assert torch.equal(latent[0], model.model.process_latent_out(inversion.trajectory[-1:])[0])
    assert inversion.trajectory.shape == (5, 16, 8, 8) and inversion.method == "direct"
    assert relative_error(latent[1], latent[0]) > 1e-3


@pytest.mark.parametrize("family", FAMILIES)
def test_ddim_inversion_is_retraced_by_the_source(host, family):
    """The source item starts at the inverted noise and samples as P2PInvert's reconstruction does: the two
    pictures agree (to the batch's rounding). Before a rectified flow's start was handled, the sampler began from
    (1 - sigma_0) times the noise, that is from nothing."""
    g, _ = inversion_graph(family, "ddim", cfg=1.0)
    out = host.run(g.prompt(), keep=("decode", "invert"))
    reconstruction, decoded = out["invert"][1], out["decode"][0]
    assert (reconstruction[0] - decoded[0]).abs().max() < 1e-3


def test_null_text_is_refused_on_mm_dits(host):
    g, _ = inversion_graph("sd3", "null_text")
    with pytest.raises(HostError, match=r"^P2PInvert: input 'method': null_text sets the unconditional text through "
                                        r"UNet cross-attention, which SD3 models do not have"):
        host.run(g.prompt(), keep=("p2p",))


@pytest.mark.parametrize("family, config, expected", [
    ("Flux", {"depth": 19, "depth_single_blocks": 38}, {("double", b) for b in (11, 12, 14, 17, 18)}),
    ("Chroma", {"depth": 19, "depth_single_blocks": 38}, {("double", b) for b in (11, 12, 14, 17, 18)}),
    ("SD3", {"depth": 24, "x_block_self_attn_layers": []}, {("joint", b + 1) for b in (4, 5, 7, 8, 9)}),
    ("SD3", {"depth": 38}, {("joint", b + 1) for b in (16, 18, 20, 21, 24)}),
    ("SD3", {"depth": 24, "x_block_self_attn_layers": list(range(13))}, None),  # SD3.5 Medium: every block
    ("Flux", {"depth": 2, "depth_single_blocks": 2}, None),  # the tests' tiny model
])
def test_local_blend_blocks_are_the_papers_per_model(pack, family, config, expected):
    assert pack.adapter.dit.blend_layers(family, config) == (None if expected is None else frozenset(expected))
