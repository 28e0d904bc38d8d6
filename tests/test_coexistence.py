"""P2PSampler beside core nodes that patch attention themselves, through ComfyUI's own executor.

PerturbedAttentionGuidance sets its replace patch at sampling time under a 2-part key; Token Merging (ToMe)
merges self-attention tokens and draws from the global RNG while sampling. With either, the source item
must stay the stock KSampler's picture at the same batch size.
"""

import pytest
import torch

from p2p_graphs import SOURCE, add_plain_ksampler, p2p_graph, relative_error, samples


def with_pag(g, model):
    return g.node("PerturbedAttentionGuidance", "pag", model=model, scale=3.0).out(0)


def with_tome(g, model):
    return g.node("TomePatchModel", "tome", model=model, ratio=0.5).out(0)


@pytest.mark.parametrize("shape", ["sd15", "sdxl"])
def test_perturbed_attention_guidance_still_guides(host, shape):
    """PAG's patch, set after ours at sampling time, runs: the source equals the stock KSampler with PAG."""
    g, n = p2p_graph(shape=shape, model_node=with_pag)
    add_plain_ksampler(g, n, SOURCE, batch_size=2)
    add_plain_ksampler(g, n, SOURCE, batch_size=2, node_id="no_pag", model=n["loader"].out(0))
    out = host.run(g.prompt(), keep=("p2p", "plain", "no_pag"))
    p2p, plain = samples(out, "p2p"), samples(out, "plain")
    assert relative_error(plain[0], samples(out, "no_pag")[0]) > 1e-3  # PAG changes the stock picture
    assert torch.equal(p2p[0], plain[0])
    assert relative_error(p2p[1], p2p[0]) > 1e-3


def test_token_merging_keeps_the_source_and_says_what_is_off(host, caplog):
    """ToMe merges the self-attention queries, so self-attention injection cannot line up (it is skipped,
    with a warning), while the source stays the stock ToMe picture bit for bit."""
    g, n = p2p_graph(model_node=with_tome)
    add_plain_ksampler(g, n, SOURCE, batch_size=2)
    with caplog.at_level("WARNING", logger="prompt_to_prompt"):
        out = host.run(g.prompt(), keep=("p2p", "plain"))
    assert torch.equal(samples(out, "p2p")[0], samples(out, "plain")[0])
    assert any("ToMe" in r.message for r in caplog.records)
