"""Prompts of different lengths in one P2P batch, through ComfyUI's own executor.

The positive conditioning is as long as the longest prompt (never the prompts' common multiple), and every
item is what it would be with its own prompt alone.
"""

import pytest
import torch

from p2p_graphs import SOURCE, Recorder, add_plain_ksampler, p2p_graph, relative_error, samples

FILLER = "a tiny dot in the corner"  # 6 tokens


def prompt_of_chunks(base: str, chunks: int) -> str:
    """`base` followed by filler, long enough to need `chunks` 77-token chunks."""
    words = base
    while len(words.split()) + 2 <= 75 * (chunks - 1) + 10:
        words += f", {FILLER}"
    return words


@pytest.fixture(scope="module", autouse=True)
def recorder(host):
    host.register({"P2PTestRecorder": Recorder})



def p2p_context_lengths():
    """Context lengths the UNet saw in the P2P batch's calls (3 items a chunk; the stock run has 1)."""
    records = Recorder.RECORDS["len"]
    return {r["context"].shape[1] for r in records if r["n"].shape[0] % 3 == 0 and 0 in r["cond_or_uncond"]}


def lcm_positive(self, extras=None):
    """The earlier reference: every prompt repeated to the least common multiple of the lengths (exact)."""
    import math

    firsts = [c[0] for c in self.conditionings]
    length = math.lcm(*(t.shape[1] for t, _ in firsts))
    cond = torch.cat([t.repeat(1, length // t.shape[1], 1) for t, _ in firsts])
    return [[cond, dict(firsts[0][1])]]


def test_prompts_of_coprime_chunk_counts(host, pack, monkeypatch):
    """Source of 2 chunks, edits of 3 and 1: the context is 3 chunks (not 6), and the batch equals the one
    made with every prompt repeated to the common multiple."""
    source = prompt_of_chunks(SOURCE, 2)
    g, n = p2p_graph(source, prompt_of_chunks(SOURCE.replace("red", "blue"), 3), steps=4,
                     model_node=lambda g, m: g.node("P2PTestRecorder", "rec", model=m, key="len", what="attn2").out(0))
    short = g.node("P2PEditSpec", "edit2", clip=n["clip"], source_prompt=source, target_prompt=SOURCE,
                   mode="refine", cross_replace=0.8, self_replace=0.4, self_layers="coarse", previous=n["edit"])
    n["p2p"].inputs["edit"] = short
    add_plain_ksampler(g, n, source)
    out = host.run(g.prompt(), keep=("p2p", "plain"))
    assert p2p_context_lengths() == {3 * 77}
    padded = samples(out, "p2p")
    assert relative_error(padded[0], samples(out, "plain")[0]) < 1e-5  # the source is its own prompt's picture

    monkeypatch.setattr(pack.adapter.bundle.EditBundle, "positive", lcm_positive)
    reference = samples(host.run(g.prompt(), keep=("p2p",)), "p2p")
    assert p2p_context_lengths() == {6 * 77}
    for item in range(3):
        assert relative_error(padded[item], reference[item]) < 1e-5
