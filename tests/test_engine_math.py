"""The engine on its own: attention arithmetic, windows, step positions, parsers, local blend."""

import math

import pytest
import torch

from p2p import (
    EditBatch,
    EditRun,
    JointCall,
    LayerCall,
    LocalBlend,
    P2PError,
    PromptTokens,
    TokenPiece,
    Window,
    blend_mask,
    make_edit,
    parse_phrases,
    parse_schedule,
    parse_weights,
    step_of_sigma,
)
from p2p.attention import apply_probabilities, mix_cross, probabilities

HEADS = 2


def vanilla_attention(q, k, v, heads=HEADS):
    """softmax(q k^T / sqrt(d)) v, rows independent: q [R, N, H*d] -> [R, N, H*d]."""
    r, n, hd = q.shape
    d = hd // heads
    qh = q.reshape(r, n, heads, d).transpose(1, 2)
    kh = k.reshape(r, -1, heads, d).transpose(1, 2)
    vh = v.reshape(r, -1, heads, d).transpose(1, 2)
    p = torch.softmax(qh @ kh.transpose(-1, -2) / math.sqrt(d), dim=-1)
    return (p @ vh).transpose(1, 2).reshape(r, n, hd)


def fake_prompt(words: list[str], chunk=8) -> PromptTokens:
    """A prompt whose words are one token each (ids from the word text)."""
    pieces = [TokenPiece(0, "start")]
    pieces += [TokenPiece(1000 + sum(map(ord, w)), "word", w, True) for w in words]
    pieces.append(TokenPiece(1, "end"))
    pieces += [TokenPiece(1, "pad")] * (chunk - len(pieces))
    return PromptTokens(" ".join(words), tuple(pieces), chunk_length=chunk)


def test_attention_over_repeated_keys_is_attention_over_one_copy():
    """Why a prompt's map can be read off its first copy when the batch repeats its context."""
    q, k = torch.randn(6, 4 * HEADS), torch.randn(8, 4 * HEADS)
    repeated = probabilities(q, k.repeat(3, 1), HEADS)  # [H, 6, 24]
    torch.testing.assert_close(repeated.reshape(HEADS, 6, 3, 8).sum(2), probabilities(q, k, HEADS))


@pytest.mark.parametrize("cross_replace", [0.0, 1.0])
def test_prompts_padded_to_the_longest_attend_over_their_own_tokens(cross_replace):
    """Source of 2 chunks, edit of 3 chunks: one context of 3 chunks (not their common multiple, 6), the
    source row padded by repeating it. Every row, padded or not, equals attention over its own prompt."""
    chunk = 8
    first, second = fake_prompt(["a", "cat", "on"], chunk), fake_prompt(["a", "mat"], chunk)
    source = PromptTokens("a cat on a mat", first.pieces + second.pieces, chunk)  # 2 chunks: 16 positions
    third = fake_prompt(["in", "the", "sun"], chunk)
    target = PromptTokens("a cat on a mat in the sun", source.pieces + third.pieces, chunk)  # 3 chunks
    edit = make_edit(source, target, mode="refine", cross_replace=cross_replace, self_replace=0.0)
    run = EditRun(EditBatch(source, (edit,)), 10)
    own = [torch.randn(n, 8) for n in (24, 24, 16, 24)]  # keys (and values) per row: uncond, uncond, src, edit
    padded = torch.stack([t.repeat(2, 1)[:24] for t in own])  # [4, 24, 8]
    q = torch.randn(4, 6, 8)
    call = LayerCall(source_row=2, edit_rows=(3,), heads=HEADS, spatial=(2, 3), downsample=1)
    out, changed = run.cross_attention(q, padded, padded, call, vanilla_attention)
    assert 2 in changed  # the padded source row is not the host's plain attention over the whole context
    expected = torch.cat([vanilla_attention(q[r : r + 1], own[r][None], own[r][None]) for r in range(3)])
    torch.testing.assert_close(out[:3], expected)
    if cross_replace == 0.0:
        torch.testing.assert_close(out[3], vanilla_attention(q[3:], own[3][None], own[3][None])[0])


def test_apply_probabilities_matches_vanilla_attention():
    q, k, v = torch.randn(5, 8), torch.randn(7, 8), torch.randn(7, 8)
    out = apply_probabilities(probabilities(q, k, HEADS), v, HEADS)
    torch.testing.assert_close(out, vanilla_attention(q[None], k[None], v[None])[0])


def test_mix_cross_inside_and_outside_the_window():
    src, edit = torch.rand(HEADS, 3, 4), torch.rand(HEADS, 3, 5)
    weights = torch.zeros(4, 5)
    weights[0, 0] = weights[1, 1] = weights[2, 3] = weights[3, 4] = 1.0  # target 2 is new
    own = torch.tensor([0.0, 0.0, 1.0, 0.0, 0.0])
    eq = torch.tensor([1.0, 2.0, 1.0, 1.0, -1.0])
    alpha = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0])  # target 4 outside its window
    out = mix_cross(src, edit, weights, own, alpha, eq)
    torch.testing.assert_close(out[..., 0], src[..., 0])
    torch.testing.assert_close(out[..., 1], 2.0 * src[..., 1])
    torch.testing.assert_close(out[..., 2], edit[..., 2])
    torch.testing.assert_close(out[..., 3], src[..., 2])
    torch.testing.assert_close(out[..., 4], edit[..., 4])


def _run_with(edit_kwargs=None, num_steps=10, blend_downsample=None, src_words=("a", "cat"), tgt_words=("a", "dog")):
    source, target = fake_prompt(list(src_words)), fake_prompt(list(tgt_words))
    edit = make_edit(source, target, **(edit_kwargs or {}))
    return EditRun(EditBatch(source, (edit,)), num_steps, blend_downsample)


def test_pass_through_run_equals_vanilla_attention():
    """Outside every window the run returns the host's attention untouched."""
    run = _run_with({"cross_replace": 0.0, "self_replace": 0.0})
    q, k, v = torch.randn(4, 6, 8), torch.randn(4, 8, 8), torch.randn(4, 8, 8)
    call = LayerCall(source_row=2, edit_rows=(3,), heads=HEADS, spatial=(2, 3), downsample=1)
    for method in (run.cross_attention, run.self_attention):
        out, changed = method(q, k, v, call, vanilla_attention)
        assert changed == ()
        torch.testing.assert_close(out, vanilla_attention(q, k, v))


def test_cross_injection_with_identical_rows_equals_vanilla_attention():
    run = _run_with({"cross_replace": 1.0}, tgt_words=("a", "cat"))
    q, k, v = torch.randn(4, 6, 8), torch.randn(4, 8, 8), torch.randn(4, 8, 8)
    q[3], k[3], v[3] = q[2], k[2], v[2]
    call = LayerCall(source_row=2, edit_rows=(3,), heads=HEADS, spatial=(2, 3), downsample=1)
    out, changed = run.cross_attention(q, k, v, call, vanilla_attention)
    assert changed == (3,)
    torch.testing.assert_close(out, vanilla_attention(q, k, v))


def test_cross_injection_uses_the_mapped_source_map():
    """A word swap: the edit's map is the source's, applied to the edit's values."""
    run = _run_with({"cross_replace": 1.0})
    q, k, v = torch.randn(4, 6, 8), torch.randn(4, 8, 8), torch.randn(4, 8, 8)
    call = LayerCall(source_row=2, edit_rows=(3,), heads=HEADS, spatial=(2, 3), downsample=1)
    out, _ = run.cross_attention(q, k, v, call, vanilla_attention)
    expected = apply_probabilities(probabilities(q[2], k[2], HEADS), v[3], HEADS)  # identity mapping here
    torch.testing.assert_close(out[3], expected)
    torch.testing.assert_close(out[:3], vanilla_attention(q, k, v)[:3])  # other rows untouched


def test_self_injection_equals_explicit_map_copy():
    """softmax(q_src k_src^T) v_edit through the host's attention == copying the source's map."""
    run = _run_with({"self_replace": 1.0, "self_min_downsample": 1})
    q, k, v = torch.randn(4, 6, 8), torch.randn(4, 6, 8), torch.randn(4, 6, 8)
    call = LayerCall(source_row=2, edit_rows=(3,), heads=HEADS, spatial=(2, 3), downsample=1)
    out, changed = run.self_attention(q, k, v, call, vanilla_attention)
    assert changed == (3,)
    source_map = probabilities(q[2], k[2], HEADS)  # [H, N, N], materialised here only to compare
    torch.testing.assert_close(out[3], apply_probabilities(source_map, v[3], HEADS))
    torch.testing.assert_close(out[:3], vanilla_attention(q, k, v)[:3])


@pytest.mark.parametrize("token_axis", [2, 1])
@pytest.mark.parametrize("self_replace, injected", [(1.0, True), (0.0, False)])
def test_joint_injection_gives_the_edit_the_source_image_queries_and_keys(token_axis, self_replace, injected):
    """MM-DiT joint attention, text tokens first: inside the window the edit's image q and k become the source's,
    its text tokens and every value stay its own (Flux's [R, H, T+I, d] and SD3's [R, T+I, H*d] layouts)."""
    run = _run_with({"self_replace": self_replace, "cross_replace": 0.0})
    text, shape = 3, ((4, HEADS, 7, 4) if token_axis == 2 else (4, 7, HEADS * 4))
    q, k, v = torch.randn(shape), torch.randn(shape), torch.randn(shape)
    seen = {}

    def attend(q_, k_, v_, mask):
        seen.update(q=q_, k=k_, v=v_)
        return q_ + k_ + v_

    call = JointCall(2, (3,), text, heads=HEADS, spatial=(1, 4), token_axis=token_axis)
    out, changed = run.joint_attention(q, k, v, call, attend)
    image = (slice(None),) * (token_axis - 1) + (slice(text, None),)
    words = (slice(None),) * (token_axis - 1) + (slice(None, text),)
    assert changed == ((3,) if injected else ())
    assert torch.equal(seen["q"][(3, *image)], (q[(2, *image)] if injected else q[(3, *image)]))
    assert torch.equal(seen["k"][(3, *image)], (k[(2, *image)] if injected else k[(3, *image)]))
    assert torch.equal(seen["q"][(3, *words)], q[(3, *words)]) and torch.equal(seen["v"], v)
    assert torch.equal(seen["q"][:3], q[:3]) and torch.equal(out, seen["q"] + seen["k"] + v)


def test_self_injection_respects_layer_resolution():
    run = _run_with({"self_replace": 1.0, "self_min_downsample": 4})
    q, k, v = torch.randn(4, 6, 8), torch.randn(4, 6, 8), torch.randn(4, 6, 8)
    fine = LayerCall(source_row=2, edit_rows=(3,), heads=HEADS, spatial=(2, 3), downsample=2)
    coarse = LayerCall(source_row=2, edit_rows=(3,), heads=HEADS, spatial=(2, 3), downsample=4)
    assert run.self_attention(q, k, v, fine, vanilla_attention)[1] == ()
    assert run.self_attention(q, k, v, coarse, vanilla_attention)[1] == (3,)


@pytest.mark.parametrize(
    "window, steps, covered",
    [
        # p2p_reference.md section 2.3, with N = 50 steps
        ((0.0, 0.8), 50, range(0, 40)),
        ((0.0, 0.4), 50, range(0, 20)),
        ((0.0, 0.2), 50, range(0, 10)),
        ((0.2, 0.6), 50, range(10, 30)),
        ((0.0, 1.0), 50, range(0, 50)),
        ((0.0, 0.29), 100, range(0, 29)),  # 0.29 * 100 is 28.999999999999996 in floating point
    ],
)
def test_window_steps(window, steps, covered):
    w = Window(*window)
    assert [s for s in range(steps) if w.contains(s, steps)] == list(covered)


def test_per_word_windows_override_the_default():
    edit = make_edit(fake_prompt(["a", "cat"]), fake_prompt(["a", "dog"]), cross_replace=1.0)
    edit = edit.scheduled([(["dog"], Window(0.0, 0.4))])
    alphas = edit.cross_alphas(50)
    dog = edit.target.find(["dog"])[0]
    assert alphas[:, dog].nonzero().flatten().tolist() == list(range(20))
    assert alphas[:, 1].sum() == 50  # "a" keeps the default window


def test_step_of_sigma_exact_intermediate_and_rounded():
    sigmas = [14.6, 7.0, 3.0, 1.0, 0.0]
    assert [step_of_sigma(s, sigmas) for s in sigmas[:-1]] == [0, 1, 2, 3]
    assert step_of_sigma(5.0, sigmas) == 1  # a second-order sampler's midpoint belongs to the earlier step
    assert step_of_sigma(0.3, sigmas) == 3
    assert step_of_sigma(7.0 * (1 - 1e-6), sigmas) == 1  # sigma after a timestep round trip
    assert step_of_sigma(20.0, sigmas) == 0


def test_parsers():
    assert parse_phrases("cat, red car\n hat") == ["cat", "red car", "hat"]
    assert parse_weights("fluffy: -2, red car: 1.5") == [("fluffy", -2.0), ("red car", 1.5)]
    assert parse_schedule("car: 0.2, hat: 0.1-0.6") == [("car", Window(0, 0.2)), ("hat", Window(0.1, 0.6))]
    for bad in ("fluffy -2", "fluffy: lots", ": 2"):
        with pytest.raises(P2PError):
            parse_weights(bad)
    for bad in ("car: 1.5", "car: 0.6-0.2", "car: soon"):
        with pytest.raises(P2PError):
            parse_schedule(bad)


def test_word_swap_needs_equal_word_counts():
    with pytest.raises(P2PError, match="same number of words"):
        make_edit(fake_prompt(["a", "cat"]), fake_prompt(["a", "big", "cat"]), mode="replace")
    assert make_edit(fake_prompt(["a", "cat"]), fake_prompt(["a", "big", "cat"]), mode="auto").mode == "refine"


def test_blend_mask_union_threshold_and_subtract():
    source = torch.zeros(4, 4)
    source[0, 0] = 1.0
    target = torch.zeros(4, 4)
    target[3, 3] = 1.0
    mask = blend_mask({"source": source, "target": target}, 0.3, (8, 8))[0, 0]
    # max-pooled 3x3 then upsampled x2: each hot cell grows to a 2x2 block of cells, i.e. 4x4 pixels
    assert mask[:4, :4].all() and mask[4:, 4:].all()
    assert not mask[:4, 4:].any() and not mask[4:, :4].any()
    sub = torch.zeros(4, 4)
    sub[0, 0] = 1.0
    mask = blend_mask({"source": source, "target": target, "subtract_source": sub}, 0.3, (8, 8))[0, 0]
    assert not mask[:2, :2].any() and mask[2:4, 2:4].all()


def test_blend_keeps_source_bits_outside_the_mask():
    run = _run_with({"cross_replace": 0.0}, num_steps=10)  # the edit keeps its own cross-attention
    edit = run.batch.edits[0]
    dog = edit.target.find(["dog"])
    run = EditRun(EditBatch(run.batch.source, (edit.blended(LocalBlend((), dog, start=0.2)),)), 10, 1)
    # Only the top-left query pixel of the edit attends to "dog"; the others attend uniformly.
    q, k, v = torch.zeros(4, 16, 8), torch.zeros(4, 8, 8), torch.randn(4, 8, 8)
    k[3, dog[0]] = 1.0
    q[3, 0] = 10.0
    call = LayerCall(source_row=2, edit_rows=(3,), heads=HEADS, spatial=(4, 4), downsample=1)
    x = torch.randn(2, 4, 8, 8)
    run.begin_evaluation(14.0, [14.0, 10, 8, 6, 5, 4, 3, 2, 1, 0.5, 0.0])  # step 0: before the start
    run.cross_attention(q, k, v, call, vanilla_attention)
    assert run.blend_output(x) is x and run.masks == [None]
    run.begin_evaluation(8.0, [14.0, 10, 8, 6, 5, 4, 3, 2, 1, 0.5, 0.0])  # step 2 = 0.2 * 10
    run.cross_attention(q, k, v, call, vanilla_attention)
    out = run.blend_output(x)
    blend_mask = run.masks[0]
    assert blend_mask is not None
    mask = blend_mask[0, 0]
    assert mask[:4, :4].all() and mask.sum() == 16  # pooled 3x3 and upsampled x2
    assert torch.equal(out[1][:, ~mask], x[0][:, ~mask])
    assert torch.equal(out[1][:, mask], x[1][:, mask])
    assert torch.equal(out[0], x[0])
    state = x.clone()
    run.blend_state(state)  # in place, as on the sampler's own latent
    assert torch.equal(state[1][:, ~mask], x[0][:, ~mask]) and torch.equal(state[1][:, mask], x[1][:, mask])
    assert torch.equal(state[0], x[0])


@pytest.mark.parametrize("fraction, steps, expected", [
    (0.29, 100, 29), (0.8, 30, 24), (0.4, 50, 20), (0.3, 10, 3), (0.57, 100, 57), (0.2899999999, 100, 28),
    (0.999, 10, 9), (1.0, 7, 7), (0.0, 7, 0),
])
def test_window_steps_are_exact_for_the_decimal_written(fraction, steps, expected):
    """0.29 * 100 is 28.999999999999996 in floating point, yet 0.29 of 100 steps is 29; and 0.2899999999 of
    100 steps is 28 (a tolerance added before flooring, as this code once did, made it 29)."""
    assert Window(0.0, fraction).stop_step(steps) == expected


@pytest.mark.parametrize("text, weight", [("hat: 1e-3", 1e-3), ("hat: 2.5E+1", 25.0), ("hat: -1e-1", -0.1),
                                          ("hat: .5e1", 5.0)])
def test_weights_accept_scientific_notation(text, weight):
    assert parse_weights(text) == [("hat", weight)]


def test_schedules_accept_scientific_notation():
    assert parse_schedule("car: 2e-1, hat: 1e-1-5E-1") == [("car", Window(0, 0.2)), ("hat", Window(0.1, 0.5))]
    for bad in ("hat: nan", "hat: inf", "hat: 1e", "hat: e3"):
        with pytest.raises(P2PError):
            parse_weights(bad)


@pytest.mark.parametrize("phrases, message", [
    ([["dog"], ["dog"]], '"dog" is given twice'),
    ([["Dog"], ["dog"]], '"dog" is given twice'),
    ([["red", "dog"], ["dog"]], '"red dog" and "dog" both name the word "dog"'),
])
def test_a_word_given_twice_in_one_call_is_refused(phrases, message):
    edit = make_edit(fake_prompt(["a", "cat"]), fake_prompt(["a", "red", "dog"]), mode="refine")
    with pytest.raises(P2PError, match=message):
        edit.reweighted([(p, 2.0) for p in phrases])
    with pytest.raises(P2PError, match=message):
        edit.scheduled([(p, Window(0.0, 0.5)) for p in phrases])


def test_weights_of_separate_calls_multiply():
    edit = make_edit(fake_prompt(["a", "cat"]), fake_prompt(["a", "dog"]))
    edit = edit.reweighted([(["dog"], 2.0)]).reweighted([(["dog"], 3.0)])
    assert edit.equalizer()[list(edit.target.find(["dog"]))].tolist() == [6.0]


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, -0.1, 1.1])
def test_fractions_refuse_nan_and_infinities(value):
    with pytest.raises(P2PError, match="must be a number within 0..1"):
        make_edit(fake_prompt(["a", "cat"]), fake_prompt(["a", "dog"]), cross_replace=value)
    with pytest.raises(P2PError, match="start must be a number within 0..1"):
        LocalBlend((1,), (), start=value)
    with pytest.raises(P2PError, match="outside"):
        make_edit(fake_prompt(["a", "cat"]), fake_prompt(["a", "dog"])).reweighted([(["dog"], value * 1000)])


@pytest.mark.parametrize("blend, fields", [
    (LocalBlend((1,), (2,)), []),
    (LocalBlend((1,), (2,), threshold=1.0), ["threshold"]),
    (LocalBlend((1,), (2,), start=1.0), ["start"]),
    (LocalBlend((1,), (2,), (1,), (2, 3)), ["subtract_words"]),
    (LocalBlend((1,), (2,), (1,), ()), []),  # the target's words are still blended
    (LocalBlend((), (2,), (), (2,), threshold=1.0, start=1.0), ["threshold", "start", "subtract_words"]),
])
def test_a_local_blend_says_when_it_cannot_change_anything(blend, fields):
    assert [field for field, _ in blend.no_effect()] == fields


def test_chunks_of_another_length_match_their_own_kind():
    """SD3's layout: CLIP chunks (with a start token), then one T5 chunk of another length (none). With another
    number of CLIP chunks in the target, its T5 end and padding still take the source T5 part's, not a CLIP
    chunk's."""
    def t5(words, length):
        pieces = [TokenPiece(2000 + sum(map(ord, w)), "word", w, True) for w in words] + [TokenPiece(1, "end")]
        return pieces + [TokenPiece(0, "pad")] * (length - len(pieces))

    source_clip, target_clip = fake_prompt(["a", "cat"]), fake_prompt(["a", "dog"])
    source = PromptTokens("a cat", (*source_clip.pieces, *t5(["a", "cat"], 5)), chunk_length=8, extra_chunks=(5,))
    target = PromptTokens("a dog", (*target_clip.pieces, *target_clip.pieces, *t5(["a", "dog"], 6)), chunk_length=8,
                          extra_chunks=(6,))
    assert source.num_chunks == 2 and target.num_chunks == 3
    assert source.chunk_specials(1) == (None, [10, 11, 12]) and target.chunk_specials(2) == (None, [18, 19, 20, 21])
    mapping = make_edit(source, target, mode="refine").mapping
    assert [mapping.source_of(t) for t in (18, 19, 20, 21)] == [[10], [11], [12], [12]]  # T5's end, then padding
    assert mapping.source_of(8) == [0] and mapping.source_of(11) == [3]  # the second CLIP chunk's start and end
    with pytest.raises(ValueError, match="not a whole number of 8-token chunks and chunks of \\[4\\]"):
        PromptTokens("a cat", source.pieces, chunk_length=8, extra_chunks=(4,))
