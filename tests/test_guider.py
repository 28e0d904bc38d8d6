"""P2PGuider with SamplerCustomAdvanced, through ComfyUI's own executor: the same batch as P2PSampler with the
equivalent KSampler settings, any sigmas, two-stage runs, attention capture, inversions, and its errors."""

import pytest
import torch

from p2p_graphs import BATCH_ROUNDING, SOURCE, add_guided_run, add_sigmas, p2p_graph, relative_error, samples
from tools.host import HostError


@pytest.mark.parametrize("sigmas", ["basic", "karras"])
@pytest.mark.parametrize("sampler", ["euler", "dpmpp_2m", "euler_ancestral"])
def test_guider_gives_the_p2p_sampler_batch_bit_for_bit(host, sampler, sigmas):
    g, n = p2p_graph(sampler=sampler, scheduler="normal" if sigmas == "basic" else "karras")
    add_guided_run(g, n, add_sigmas(g, n, sigmas))
    out = host.run(g.prompt(), keep=("p2p", "guided"))
    p2p, guided = samples(out, "p2p"), samples(out, "guided")
    assert guided.shape[0] == 2
    assert torch.equal(guided, p2p)
    assert relative_error(guided[1], guided[0]) > 1e-3  # the edit is a different image


@pytest.mark.parametrize("sampler", ["euler", "dpmpp_2m", "euler_ancestral"])
def test_with_align_your_steps_the_source_is_a_plain_custom_sampler_run(host, sampler):
    """No KSampler scheduler makes AlignYourSteps' sigmas: the source is compared with the stock CFGGuider on one
    latent (ancestral noise included: it is drawn for one latent and shared)."""
    g, n = p2p_graph(sampler=sampler)
    sigmas = add_sigmas(g, n, "ays")
    add_guided_run(g, n, sigmas)
    positive = g.node("CLIPTextEncode", "plain_positive", clip=n["clip"], text=SOURCE)
    plain = g.node("CFGGuider", "plain_guider", model=n["model"], positive=positive, negative=n["negative"],
                   cfg=n["p2p"].inputs["cfg"])
    add_guided_run(g, n, sigmas, node_id="plain", guider=plain)
    out = host.run(g.prompt(), keep=("guided", "plain"))
    guided, plain_out = samples(out, "guided"), samples(out, "plain")
    assert relative_error(guided[0], plain_out[0]) < BATCH_ROUNDING
    assert relative_error(guided[1], guided[0]) > 1e-3


def test_a_two_stage_run_on_split_sigmas_keeps_the_source(host):
    """Stage two continues every item from stage one's batch (DisableNoise); the source is the one-stage source.
    Each stage's windows are fractions of its own steps."""
    g, n = p2p_graph(steps=8)
    sigmas = add_sigmas(g, n, "basic")
    split = g.node("SplitSigmas", "split", sigmas=sigmas, step=5)
    add_guided_run(g, n, split.out(0), node_id="first")
    add_guided_run(g, n, split.out(1), node_id="second", latent=g.nodes["first"],
                   noise=g.node("DisableNoise", "no_noise"))
    out = host.run(g.prompt(), keep=("p2p", "second"))
    one_stage, two_stage = samples(out, "p2p"), samples(out, "second")
    assert two_stage.shape == one_stage.shape
    assert relative_error(two_stage[0], one_stage[0]) < BATCH_ROUNDING
    assert relative_error(two_stage[1], two_stage[0]) > 1e-3


def test_guider_attention_is_the_p2p_sampler_attention(host):
    g, n = p2p_graph()
    guided = add_guided_run(g, n, add_sigmas(g, n, "basic"))
    g.node("P2PGuiderAttention", "attention", guider=g.nodes["guided_guider"], latent=guided)
    out = host.run(g.prompt(), keep=("p2p", "attention"))
    ours, theirs = out["attention"][0].maps, out["p2p"][1].maps
    assert len(ours.cross) == len(theirs.cross) == 2
    for a, b in zip(ours.cross, theirs.cross, strict=True):
        assert torch.equal(a, b)


def test_guider_attention_refuses_a_latent_the_guider_did_not_make(host):
    g, n = p2p_graph()
    add_guided_run(g, n, add_sigmas(g, n, "basic"))
    n["p2p"].inputs["seed"] = 2  # another run's latent (with the same seed it would be this run's, bit for bit)
    g.node("P2PGuiderAttention", "attention", guider=g.nodes["guided_guider"], latent=n["p2p"])
    with pytest.raises(HostError, match=r"^P2PGuiderAttention: input 'latent': is not a latent this P2P Guider made"):
        host.run(g.prompt(), keep=("attention",))


def test_capture_off_through_the_guider(host):
    g, n = p2p_graph()
    capture = g.node("P2PAttentionCapture", "capture", enabled=False, resolution="auto", start=0.0, end=1.0,
                     layers="down+up", per_step=False, self_attention=True)
    guided = add_guided_run(g, n, add_sigmas(g, n, "basic"), capture=capture)
    g.node("P2PGuiderAttention", "attention", guider=g.nodes["guided_guider"], latent=guided)
    out = host.run(g.prompt(), keep=("attention",))
    assert out["attention"][0].maps is None


@pytest.mark.parametrize("batch, match", [
    (3, r"^P2PGuider: input 'latent_image': needs one latent, or one per item \(2: the source and each edit"),
])
def test_guider_refuses_a_latent_batch_of_another_size(host, batch, match):
    g, n = p2p_graph()
    latent = g.node("EmptyLatentImage", "batch", width=128, height=128, batch_size=batch)
    add_guided_run(g, n, add_sigmas(g, n, "basic"), latent=latent)
    with pytest.raises(HostError, match=match):
        host.run(g.prompt(), keep=("guided",))


def test_guider_refuses_sigmas_without_a_step(host):
    g, n = p2p_graph()
    split = g.node("SplitSigmas", "split", sigmas=add_sigmas(g, n, "basic"), step=6)
    add_guided_run(g, n, split.out(1))
    with pytest.raises(HostError, match=r"^P2PGuider: input 'sigmas': holds no step to sample"):
        host.run(g.prompt(), keep=("guided",))
