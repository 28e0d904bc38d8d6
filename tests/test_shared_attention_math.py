"""The engine's shared self-attention (StyleAligned) against the formulas materialised in float64: AdaIN, the
reference rows of each conditioning chunk, the reference's key scale and weight (through the host's attention
for weight 1 and through two passes merged by their log-normalisers otherwise), and the item-list parser."""

import math

import pytest
import torch

from p2p import P2PError, SharedAttentionSpec, parse_items
from p2p.shared_attention import adain, channel_stats, merge_lse, shared_attention, shared_rows, sharing_rows

HEADS, D = 2, 8


def host_attend(q, k, v):
    """The host's attention in its [R, N, H*d] layout."""
    def split(x):
        return x.reshape(x.shape[0], x.shape[1], HEADS, -1).transpose(1, 2)

    out = torch.nn.functional.scaled_dot_product_attention(split(q), split(k), split(v))
    return out.transpose(1, 2).reshape(q.shape[0], q.shape[1], -1)


def materialised(q, k, v, ref_k, ref_v, key_scale, weight):
    """softmax([q k^T ; q (s k_ref)^T + log w] / sqrt(d)) [v ; v_ref], per head, in float64."""
    def split(x):
        return x.double().reshape(x.shape[0], x.shape[1], HEADS, -1).transpose(1, 2)

    qh, kh, vh = split(q), split(k), split(v)
    rk, rv = split(ref_k) * key_scale, split(ref_v)
    own = qh @ kh.transpose(-1, -2) / math.sqrt(D)
    ref = qh @ rk.transpose(-1, -2) / math.sqrt(D) + (math.log(weight) if weight > 0 else -math.inf)
    probs = torch.softmax(torch.cat([own, ref], -1), -1)
    out = probs @ torch.cat([vh, rv], 2)
    return out.transpose(1, 2).reshape(q.shape[0], q.shape[1], -1)


def rows(n=3, tokens=10, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(n, tokens, HEADS * D, generator=gen) for _ in range(5)]


def test_adain_is_the_papers_formula():
    gen = torch.Generator().manual_seed(1)
    x, ref = torch.randn(2, 12, 6, generator=gen) * 3 + 1, torch.randn(1, 12, 6, generator=gen)
    expected = (x - x.mean(1, keepdim=True)) / (x.var(1, keepdim=True) + 1e-5).sqrt() \
        * (ref.var(1, keepdim=True) + 1e-5).sqrt() + ref.mean(1, keepdim=True)
    torch.testing.assert_close(adain(x, ref), expected)
    torch.testing.assert_close(adain(x, x), x, atol=1e-4, rtol=1e-4)
    mean, std = channel_stats(adain(x, ref))
    ref_mean, ref_std = channel_stats(ref)
    torch.testing.assert_close(mean, ref_mean.expand_as(mean), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(std, ref_std.expand_as(std), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(("chunks", "batch", "items", "expected"), [
    (2, 3, None, [(1, 0), (2, 0), (4, 3), (5, 3)]),  # uncond rows share with the uncond reference
    (1, 3, None, [(1, 0), (2, 0)]),  # cfg 1, or a chunk evaluated alone
    (2, 4, (2, 9), [(2, 0), (6, 4)]),  # items past the batch are ignored
    (1, 1, None, []),
])
def test_each_chunk_shares_with_its_own_item_0(chunks, batch, items, expected):
    assert sharing_rows(chunks, batch, items) == expected


@pytest.mark.parametrize("weight", [1.0, 0.5, 2.0, 0.0])
@pytest.mark.parametrize("key_scale", [1.0, 0.5])
@pytest.mark.parametrize("fused", [True, False])
def test_shared_attention_is_the_materialised_softmax(weight, key_scale, fused):
    q, k, v, ref_k, ref_v = rows()
    spec = SharedAttentionSpec(key_scale=key_scale, reference_weight=weight)
    out = shared_attention(q, k, v, ref_k, ref_v, HEADS, spec, host_attend, fused=fused)
    expected = materialised(q, k, v, ref_k, ref_v, key_scale, weight)
    torch.testing.assert_close(out.double(), expected, atol=2e-5, rtol=1e-4)



@pytest.mark.parametrize("mode", ["queries+keys", "queries+keys+values", "off"])
@pytest.mark.parametrize(("weight", "upcast"), [(1.0, False), (2.0, False), (2.0, True)])
def test_sharing_rows_are_adain_then_shared_attention(mode, weight, upcast):
    """`shared_rows` (what the StyleAligned patch and its memory bench compute): each sharing row's named
    projections AdaIN-ed to its own reference row's, then attention over its keys and the reference's."""
    q, k, v = rows(n=6, seed=5)[:3]
    pairs = sharing_rows(2, 3, None)  # [(1, 0), (2, 0), (4, 3), (5, 3)]
    spec = SharedAttentionSpec(adain=mode, reference_weight=weight)
    out = shared_rows(q.half() if upcast else q, k.half() if upcast else k, v.half() if upcast else v, pairs,
                      HEADS, spec, host_attend, fused=False, upcast=upcast)
    assert out.shape == (len(pairs), 10, HEADS * D) and out.dtype == (torch.float16 if upcast else torch.float32)
    for i, (row, ref) in enumerate(pairs):
        own = {"q": q[row : row + 1], "k": k[row : row + 1], "v": v[row : row + 1]}
        for name in {"queries+keys": "qk", "queries+keys+values": "qkv", "off": ""}[mode]:
            own[name] = adain(own[name], {"q": q, "k": k, "v": v}[name][ref : ref + 1])
        expected = materialised(own["q"], own["k"], own["v"], k[ref : ref + 1], v[ref : ref + 1], 1.0, weight)
        atol, rtol = (2e-2, 2e-2) if upcast else (2e-5, 1e-4)
        torch.testing.assert_close(out[i : i + 1].double(), expected, atol=atol, rtol=rtol)

def test_merging_two_key_sets_is_one_softmax_over_both():
    q, k, v, k2, v2 = (x.reshape(3, 10, HEADS, D).transpose(1, 2) for x in rows(seed=3))
    from p2p.joint import attention_with_lse

    o1, l1 = attention_with_lse(q, k, v, fused=False)
    o2, l2 = attention_with_lse(q, k2, v2, fused=False)
    both = torch.nn.functional.scaled_dot_product_attention(q, torch.cat([k, k2], 2), torch.cat([v, v2], 2))
    torch.testing.assert_close(merge_lse(o1, l1, o2, l2, 0.0), both, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(merge_lse(o1, l1, o2, l2, -1e4), o1, atol=1e-6, rtol=1e-6)  # weight -> 0: own keys


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"layers": "sideways"}, "unknown layer group"),
    ({"adain": "keys"}, "unknown AdaIN mode"),
    ({"key_scale": float("nan")}, "key_scale"),
    ({"reference_weight": -1.0}, "reference_weight"),
    ({"reference_weight": float("inf")}, "reference_weight"),
    ({"share_items": (0, 1)}, "item 0 is the reference"),
])
def test_bad_specs_are_refused(kwargs, message):
    with pytest.raises(P2PError, match=message):
        SharedAttentionSpec(**kwargs)


@pytest.mark.parametrize(("text", "expected"), [
    ("", None), (" ", None), ("1", (1,)), ("1, 3-5", (1, 3, 4, 5)), ("4-4\n2", (2, 4)), ("2, 2", (2,)),
])
def test_item_lists(text, expected):
    assert parse_items(text) == expected


@pytest.mark.parametrize(("text", "message"), [
    ("one", "not an item number"), ("-1", "not an item number"), ("5-3", "ends before"), ("1.5", "not an item"),
    ("0-99999", "beyond"),
])
def test_bad_item_lists_are_refused(text, message):
    with pytest.raises(P2PError, match=message):
        parse_items(text)
