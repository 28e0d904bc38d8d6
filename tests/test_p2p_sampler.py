"""P2PSampler through ComfyUI's own executor, on tiny random SD1.x-, SD2.x- and SDXL-shaped models.

Invariants checked (the numbering follows the issue):
  (i)   the source item is an ordinary generation of the source prompt;
  (ii)  while the cross window is open, the edit's cross-attention is the mapped source attention;
  (iii) identical prompts with full windows reproduce the source;
  (iv)  outside the local-blend mask the edit equals the source after every blended step;
  (v)   self-injection equals copying the source's map (see test_engine_math for the arithmetic; here the
        invariant (iii) with self_layers="all" exercises it through the host's attention);
  (vi)  another pack's additive attn2 replace patch still contributes.
"""

import math

import pytest
import torch

from p2p_graphs import BATCH_ROUNDING, SOURCE, TARGET, Recorder, add_plain_ksampler, p2p_graph, relative_error, samples
from tools.host import HostError

DETERMINISTIC = ["euler", "heun", "dpmpp_2m", "uni_pc", "ddim", "lms", "dpm_2", "deis", "ipndm"]
STOCHASTIC = ["euler_ancestral", "dpm_2_ancestral", "dpmpp_2s_ancestral", "dpmpp_sde", "dpmpp_2m_sde",
              "dpmpp_2m_sde_gpu", "dpmpp_3m_sde", "ddpm", "lcm", "er_sde", "seeds_2", "sa_solver"]



@pytest.fixture(scope="module", autouse=True)
def recorder(host):
    host.register({"P2PTestRecorder": Recorder})



@pytest.mark.parametrize("sampler", DETERMINISTIC)
def test_source_is_bit_identical_to_ksampler_at_the_same_batch(host, sampler):
    """(i) With the batch layout fixed, the source row is computed exactly as a stock KSampler computes it."""
    g, n = p2p_graph(sampler=sampler)
    add_plain_ksampler(g, n, SOURCE, batch_size=2)
    out = host.run(g.prompt(), keep=("p2p", "plain"))
    p2p, plain = samples(out, "p2p"), samples(out, "plain")
    assert p2p.shape[0] == 2
    assert torch.equal(p2p[0], plain[0])
    assert relative_error(p2p[1], p2p[0]) > 1e-3  # the edit is a different image


@pytest.mark.parametrize("sampler", DETERMINISTIC[:3] + STOCHASTIC)
def test_source_matches_a_single_ksampler_run(host, sampler):
    """(i) Against a batch-1 KSampler: equal up to the backend's batch rounding, ancestral/SDE samplers
    included (their per-step noise is drawn as for a single latent and shared by the batch)."""
    g, n = p2p_graph(sampler=sampler)
    add_plain_ksampler(g, n, SOURCE)
    out = host.run(g.prompt(), keep=("p2p", "plain"))
    assert relative_error(samples(out, "p2p")[0], samples(out, "plain")[0]) < BATCH_ROUNDING


@pytest.mark.parametrize("shape", ["sd15", "sd2", "sdxl"])
@pytest.mark.parametrize("sampler", ["euler", "euler_ancestral", "dpmpp_sde"])
def test_identical_prompts_with_full_windows_reproduce_the_source(host, shape, sampler):
    """(iii) + (v): with the source's maps injected everywhere, the edit is the source. Stochastic samplers
    pass only because every item gets the same per-step noise."""
    g, n = p2p_graph(SOURCE, SOURCE, shape=shape, sampler=sampler, cross=1.0, self_replace=1.0, self_layers="all")
    out = samples(host.run(g.prompt(), keep=("p2p",)), "p2p")
    assert relative_error(out[1], out[0]) < 1e-4


@pytest.mark.parametrize("shape", ["sd2", "sdxl"])
def test_other_families_keep_the_source(host, shape):
    """(i) SD2.x (v-prediction, float32 attention) and SDXL (pooled output) at the same batch size."""
    g, n = p2p_graph(shape=shape)
    add_plain_ksampler(g, n, SOURCE, batch_size=2)
    out = host.run(g.prompt(), keep=("p2p", "plain"))
    assert torch.equal(samples(out, "p2p")[0], samples(out, "plain")[0])
    assert relative_error(samples(out, "p2p")[1], samples(out, "p2p")[0]) > 1e-3


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_models(host, dtype):
    g, n = p2p_graph(dtype=dtype)
    add_plain_ksampler(g, n, SOURCE, batch_size=2)
    out = host.run(g.prompt(), keep=("p2p", "plain"))
    p2p = samples(out, "p2p")
    assert torch.isfinite(p2p).all()
    assert torch.equal(p2p[0], samples(out, "plain")[0])


def test_edit_cross_attention_is_the_mapped_source_attention(host, pack):
    """(ii) Recorded at every cross-attention layer through ComfyUI's attn2 patch points: while the window
    is open, the edit's output is the source's map applied to the edit's values (the model's head width
    exceeds the 77 tokens, so equal outputs mean equal maps); after it closes, the edit attends on its own."""

    def recorded(g, model):
        return g.node("P2PTestRecorder", "rec", model=model, key="ii", what="attn2").out(0)

    g, n = p2p_graph("a red circle", "a red square", shape="sd15-wide", steps=4, cross=0.5, model_node=recorded)
    host.run(g.prompt(), keep=("p2p",))
    records = Recorder.RECORDS["ii"]
    dm = host.executor.caches.outputs.get("loader").outputs[0][0].get_model_object("diffusion_model")
    checked = {"injected": 0, "own": 0}
    for rec in records:
        attn = _transformer_block(dm, rec["block"], rec["index"]).attn2
        assert attn.heads == 1 and attn.dim_head >= 77
        q = attn.to_q(rec["n"]).float()
        k = attn.to_k(rec["context"]).float()
        v = attn.to_v(rec["context"]).float()
        probs = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(q.shape[-1]), -1)
        own = attn.to_out(probs @ v)
        cond, uncond = rec["cond_or_uncond"].index(0), rec["cond_or_uncond"].index(1)
        src_row, edit_row = 2 * cond, 2 * cond + 1
        injected = pack.p2p.step_of_sigma(rec["sigma"], rec["sample_sigmas"]) < 2  # cross_replace 0.5 of 4 steps
        probs_edit = probs[src_row] if injected else probs[edit_row]  # a same-length swap maps token i to i
        expected = attn.to_out(probs_edit @ v[edit_row])
        torch.testing.assert_close(rec["out"][edit_row], expected, rtol=1e-4, atol=1e-4)
        # the unconditional branch and the source attend on their own
        for row in (2 * uncond, 2 * uncond + 1, src_row):
            torch.testing.assert_close(rec["out"][row], own[row], rtol=1e-4, atol=1e-4)
        checked["injected" if injected else "own"] += 1
    assert checked["injected"] > 0 and checked["own"] > 0


def _transformer_block(dm, block, index):
    name, block_id = block
    container = {"input": dm.input_blocks, "middle": [dm.middle_block], "output": dm.output_blocks}[name][block_id]
    transformer = next(layer for layer in container if hasattr(layer, "transformer_blocks"))
    return transformer.transformer_blocks[index]


def test_local_blend_keeps_the_source_outside_the_mask(host):
    """(iv) Recorded around every model evaluation: from the start step on, the edit's prediction equals
    the source's exactly wherever the mask excludes it, the model then sees the edit equal to the source
    there, and the final latent keeps it."""

    def recorded(g, model):
        return g.node("P2PTestRecorder", "rec", model=model, key="iv", what="evaluations").out(0)

    steps = 8
    g, n = p2p_graph(steps=steps, width=256, height=256, model_node=recorded)
    blend = g.node("P2PLocalBlend", "blend", edit=n["edit"], source_words="red circle", target_words="blue circle",
                   threshold=0.8, start=0.25)  # random weights attend diffusely: a high threshold gives a partial mask
    n["p2p"].inputs["edit"] = blend
    final = samples(host.run(g.prompt(), keep=("p2p",)), "p2p")
    records = Recorder.RECORDS["iv"]
    predictions = [r for r in records if r["kind"] == "predict"]
    inputs = [r for r in records if r["kind"] == "unet_input"]
    assert len(predictions) == steps == len(inputs)
    start = 2  # 0.25 * 8
    for i, pred in enumerate(predictions):
        den = pred["denoised"]
        same = den[1] == den[0]
        if i < start:
            continue
        assert 0 < same.sum() < same.numel(), "the mask should keep part of the image and edit the rest"
        if i + 1 < steps:
            seen = inputs[i + 1]["x"][:2]  # the UNet input rows of the first chunk: [source, edit]
            assert torch.equal(seen[1][same], seen[0][same])
    last_same = predictions[-1]["denoised"][1] == predictions[-1]["denoised"][0]
    assert torch.equal(final[1][last_same], final[0][last_same])
    assert not torch.equal(final[1], final[0])


@pytest.mark.parametrize("what", ["additive_attn2", "additive_attn2_2tuple"])
def test_an_additive_attn2_patch_of_another_pack_still_contributes(host, what):
    """(vi) An IPAdapter-style replace patch set before P2P: the source is exactly the stock KSampler with
    that patch, and with identical prompts the edit still equals the source, which it could not if the
    patch's contribution were dropped from the edited rows."""

    def patched(g, model):
        return g.node("P2PTestRecorder", "additive", model=model, key="vi", what=what).out(0)

    g, n = p2p_graph(SOURCE, SOURCE, cross=1.0, self_replace=1.0, self_layers="all", model_node=patched)
    add_plain_ksampler(g, n, SOURCE, batch_size=2)
    out = host.run(g.prompt(), keep=("p2p", "plain"))
    assert Recorder.RECORDS["vi"], "the other pack's patch never ran"
    p2p = samples(out, "p2p")
    assert torch.equal(p2p[0], samples(out, "plain")[0])
    assert relative_error(p2p[1], p2p[0]) < 1e-4

    g2, n2 = p2p_graph(SOURCE, SOURCE, cross=1.0, self_replace=1.0, self_layers="all")
    without = samples(host.run(g2.prompt(), keep=("p2p",)), "p2p")
    assert relative_error(without[0], p2p[0]) > 1e-3  # the patch does change the image


def test_a_pack_that_changes_the_batch_layout_leaves_those_layers_unedited(host, caplog):
    def patched(g, model):
        return g.node("P2PTestRecorder", "doubling", model=model, key="layout", what="batch_doubling").out(0)

    g, n = p2p_graph(model_node=patched)
    add_plain_ksampler(g, n, SOURCE, batch_size=2)
    with caplog.at_level("WARNING", logger="prompt_to_prompt"):
        out = host.run(g.prompt(), keep=("p2p", "plain"))
    assert Recorder.RECORDS["layout"]
    assert any("batch layout" in r.message for r in caplog.records)
    assert torch.equal(samples(out, "p2p")[0], samples(out, "plain")[0])


def test_img2img_with_denoise(host):
    """An encoded image as the starting latent, part of the schedule: the source is still the stock run."""
    g, n = p2p_graph()
    noise = g.node("EmptyLatentImage", "base", width=128, height=128, batch_size=1)
    image = g.node("VAEDecode", "image", samples=noise, vae=n["loader"].out(2))
    encoded = g.node("VAEEncode", "encoded", pixels=image, vae=n["loader"].out(2))
    n["p2p"].inputs.update(latent_image=encoded, denoise=0.6)
    plain = add_plain_ksampler(g, n, SOURCE, batch_size=2)
    g.nodes["plain_latent"].inputs["samples"] = encoded
    plain.inputs["denoise"] = 0.6
    out = host.run(g.prompt(), keep=("p2p", "plain"))
    assert torch.equal(samples(out, "p2p")[0], samples(out, "plain")[0])
    assert relative_error(samples(out, "p2p")[1], samples(out, "p2p")[0]) > 1e-4


def test_several_edits_in_one_batch(host):
    g, n = p2p_graph()
    second = g.node("P2PEditSpec", "edit2", clip=n["clip"], source_prompt=SOURCE, target_prompt=SOURCE,
                    mode="refine", cross_replace=1.0, self_replace=1.0, self_layers="all", previous=n["edit"])
    n["p2p"].inputs["edit"] = second
    add_plain_ksampler(g, n, SOURCE, batch_size=3)
    out = host.run(g.prompt(), keep=("p2p", "plain"))
    p2p = samples(out, "p2p")
    assert p2p.shape[0] == 3
    assert torch.equal(p2p[0], samples(out, "plain")[0])
    assert relative_error(p2p[1], p2p[0]) > 1e-3  # the word swap
    assert relative_error(p2p[2], p2p[0]) < 1e-4  # the identical prompt with full windows


def test_local_blend_on_two_edits_with_subtract_words(host):
    g, n = p2p_graph(steps=6, width=256, height=256)
    first = g.node("P2PLocalBlend", "blend1", edit=n["edit"], source_words="red circle", target_words="blue circle",
                   threshold=0.8, start=0.2, subtract_words="small square")
    second = g.node("P2PEditSpec", "edit2", clip=n["clip"], source_prompt=SOURCE,
                    target_prompt=SOURCE.replace("square", "triangle"), mode="auto", cross_replace=0.8,
                    self_replace=0.4, self_layers="coarse", previous=first)
    blend2 = g.node("P2PLocalBlend", "blend2", edit=second, source_words="square", target_words="triangle",
                    threshold=0.8, start=0.2)
    n["p2p"].inputs["edit"] = blend2
    out = samples(host.run(g.prompt(), keep=("p2p",)), "p2p")
    for e in (1, 2):
        same = out[e] == out[0]
        assert 0 < same.sum() < same.numel()


def test_long_prompts_and_mismatched_lengths(host):
    filler = ", ".join(["a tiny dot in the corner"] * 14)  # > 77 tokens
    long_source = f"{SOURCE}, {filler}"
    g, n = p2p_graph(long_source, long_source, cross=1.0, self_replace=1.0, self_layers="all")
    out = samples(host.run(g.prompt(), keep=("p2p",)), "p2p")
    assert relative_error(out[1], out[0]) < 1e-4
    # a short source and a long target: the batch repeats the short context; the source is still itself
    g, n = p2p_graph(SOURCE, f"{TARGET}, {filler}", negative="blurry")
    add_plain_ksampler(g, n, SOURCE)
    out = host.run(g.prompt(), keep=("p2p", "plain"))
    assert relative_error(samples(out, "p2p")[0], samples(out, "plain")[0]) < BATCH_ROUNDING


@pytest.mark.parametrize("width, height", [(192, 128), (120, 72)])
def test_any_resolution_and_aspect_ratio(host, width, height):
    g, n = p2p_graph(SOURCE, SOURCE, cross=1.0, self_replace=1.0, self_layers="all", width=width, height=height)
    blend = g.node("P2PLocalBlend", "blend", edit=n["edit"], source_words="circle", target_words="circle",
                   threshold=0.3, start=0.2)
    n["p2p"].inputs["edit"] = blend
    out = samples(host.run(g.prompt(), keep=("p2p",)), "p2p")
    assert out.shape[-2:] == (height // 8, width // 8)
    assert relative_error(out[1], out[0]) < 1e-4


def test_reweight_and_word_schedule_change_the_edit(host):
    g, n = p2p_graph(cross=1.0)
    base = samples(host.run(g.prompt(), keep=("p2p",)), "p2p")
    reweight = g.node("P2PReweight", "rw", edit=n["edit"], weights="blue: 4")
    n["p2p"].inputs["edit"] = reweight
    reweighted = samples(host.run(g.prompt(), keep=("p2p",)), "p2p")
    assert torch.equal(reweighted[0], base[0])
    assert relative_error(reweighted[1], base[1]) > 1e-3
    g, n = p2p_graph(cross=1.0, word_schedule="blue: 0.2")
    scheduled = samples(host.run(g.prompt(), keep=("p2p",)), "p2p")
    assert torch.equal(scheduled[0], base[0])
    assert not torch.equal(scheduled[1], base[1])  # runs are deterministic: any change is the schedule's


def test_the_input_model_is_left_unchanged(host):
    """P2PSampler patches a clone: the MODEL it was given keeps no patch or wrapper, and a stock KSampler on
    it gives the same result before and after a P2P run."""
    import nodes

    g, n = p2p_graph()
    out = host.run(g.prompt(), keep=("p2p", "negative"))
    model = host.executor.caches.outputs.get("loader").outputs[0][0]
    clip = host.executor.caches.outputs.get("loader").outputs[1][0]
    positive = nodes.CLIPTextEncode().encode(clip, SOURCE)[0]
    latent = {"samples": torch.zeros(1, 4, 16, 16)}

    def stock():
        return nodes.common_ksampler(model, 1, 6, 5.0, "euler", "normal", positive, out["negative"][0], latent)[0]

    before = stock()["samples"]
    n["p2p"].inputs["seed"] = 7  # a new P2P run on the same (cached) MODEL
    assert samples(host.run(g.prompt(), keep=("p2p",)), "p2p").shape[0] == 2
    assert not model.model_options.get("transformer_options", {}).get("patches_replace")
    assert not model.wrappers
    assert torch.equal(stock()["samples"], before)


def test_progress_is_reported(host):
    g, n = p2p_graph(steps=5)
    host.run(g.prompt(), keep=("p2p",))
    progress = [d for d in host.server.of("progress") if d.get("node") == "p2p"]
    assert [d["value"] for d in progress][-1] == 5


def test_cfg_one_runs_the_conditional_branch_only(host):
    g, n = p2p_graph(SOURCE, SOURCE, cfg=1.0, cross=1.0, self_replace=1.0, self_layers="all")
    out = samples(host.run(g.prompt(), keep=("p2p",)), "p2p")
    assert relative_error(out[1], out[0]) < 1e-4


# -- errors name the node and the input ---------------------------------------------------------------


def run_error(host, g, keep=("p2p",)) -> str:
    with pytest.raises(HostError) as info:
        host.run(g.prompt(), keep=keep)
    return str(info.value)


def test_error_latent_batch(host):
    g, n = p2p_graph()
    n["latent"].inputs["batch_size"] = 2
    message = run_error(host, g)
    assert "P2PSampler" in message and "latent_image" in message and "batch of one" in message


def test_error_clip_of_another_model(host):
    g, n = p2p_graph()
    other = g.node("RandomModelLoader", "sdxl_loader", shape="sdxl", seed=0, dtype="float32")
    n["edit"].inputs["clip"] = other.out(1)
    n["negative"].inputs["clip"] = other.out(1)
    message = run_error(host, g)
    assert "P2PSampler" in message and "'edit'" in message and "CLIP of the same checkpoint" in message


def test_error_word_counts_for_a_swap(host):
    g, n = p2p_graph("a red circle", "a red circle with stripes", mode="replace")
    message = run_error(host, g)
    assert "P2PEditSpec" in message and "target_prompt" in message and "same number of words" in message


def test_error_reweight_word_not_in_prompt(host):
    g, n = p2p_graph()
    n["p2p"].inputs["edit"] = g.node("P2PReweight", "rw", edit=n["edit"], weights="green: 2")
    message = run_error(host, g)
    assert "P2PReweight" in message and "'weights'" in message and '"green" is not a word' in message


def test_error_malformed_weights_and_schedule(host):
    g, n = p2p_graph()
    n["p2p"].inputs["edit"] = g.node("P2PReweight", "rw", edit=n["edit"], weights="blue 2")
    assert "P2PReweight" in run_error(host, g)
    g, n = p2p_graph(word_schedule="blue: later")
    message = run_error(host, g)
    assert "P2PEditSpec" in message and "word_schedule" in message


def test_error_blend_word_not_in_prompt(host):
    g, n = p2p_graph()
    n["p2p"].inputs["edit"] = g.node("P2PLocalBlend", "b", edit=n["edit"], source_words="triangle",
                                     target_words="", threshold=0.3, start=0.2)
    message = run_error(host, g)
    assert "P2PLocalBlend" in message and "source_words" in message


def test_error_subtract_word_in_neither_prompt(host):
    g, n = p2p_graph()
    n["p2p"].inputs["edit"] = g.node("P2PLocalBlend", "b", edit=n["edit"], source_words="circle", target_words="",
                                     threshold=0.3, start=0.2, subtract_words="hexagon")
    message = run_error(host, g)
    assert "P2PLocalBlend" in message and "subtract_words" in message and "hexagon" in message


def test_error_different_source_in_previous(host):
    g, n = p2p_graph()
    second = g.node("P2PEditSpec", "edit2", clip=n["clip"], source_prompt="another source", target_prompt="x",
                    mode="auto", cross_replace=0.8, self_replace=0.4, self_layers="coarse", previous=n["edit"])
    n["p2p"].inputs["edit"] = second
    message = run_error(host, g)
    assert "P2PEditSpec" in message and "source_prompt" in message


def test_error_model_the_pack_does_not_edit(host):
    """A transformer model the pack does not edit (AuraFlow-shaped, built from ComfyUI's classes) is refused with a
    message naming its family."""

    class TinyAuraFlow:
        RETURN_TYPES = ("MODEL",)
        FUNCTION = "load"
        CATEGORY = "prompt_to_prompt/dev"

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {}}

        def load(self):
            import comfy.model_management
            import comfy.model_patcher
            import comfy.supported_models

            config = comfy.supported_models.AuraFlow({"cond_seq_dim": 32, "dim": 64, "n_layers": 2,
                                                      "n_double_layers": 1, "n_heads": 2, "global_conddim": 64,
                                                      "max_seq": 64})
            model = config.get_model({})
            return (comfy.model_patcher.ModelPatcher(model, comfy.model_management.get_torch_device(), "cpu"),)

    host.register({"TinyAuraFlow": TinyAuraFlow})
    g, n = p2p_graph()
    g.node("TinyAuraFlow", "aura")
    n["p2p"].inputs["model"] = g.nodes["aura"].out(0)
    message = run_error(host, g)
    assert message.startswith("P2PSampler: input 'model': AuraFlow models (MMDiT) are not supported yet")
