"""Attention capture on synthetic maps with known answers: heads, layers, steps, repeated contexts, words."""

import torch
from test_engine_math import HEADS, fake_prompt, vanilla_attention

from p2p import (
    AttentionCapture,
    AttentionMaps,
    CaptureSpec,
    EditBatch,
    EditRun,
    LayerCall,
    PromptTokens,
    TokenPiece,
    Window,
    make_edit,
    prompt_words,
    self_components,
    word_maps,
)
from p2p.attention import probabilities


def _capture(prompts, num_steps=4, **spec):
    return AttentionCapture(CaptureSpec(**spec), tuple(prompts), num_steps, downsample=2)


def _maps(run: EditRun) -> AttentionMaps:
    """The maps the run captured (the tests below give every run a capture that matches its layer)."""
    assert run.capture is not None
    maps = run.capture.result()
    assert maps is not None
    return maps


def test_means_over_heads_layers_and_steps():
    prompt = fake_prompt(["a", "cat"])
    cap = _capture([prompt], self_attention=False)
    L = prompt.length
    expected = torch.zeros(2, 3, L)
    n = 0
    for step in range(4):
        for layer in ("x", "y"):
            probs = torch.rand(HEADS, 6, L)
            cap.add_cross(0, step, probs, (2, 3), layer)
            expected += probs.mean(0).reshape(2, 3, L)
            n += 1
    maps = cap.result()
    torch.testing.assert_close(maps.cross[0], expected / n)
    assert maps.steps == (0, 1, 2, 3) and maps.layer_count == 2 and maps.self_maps is None


def test_only_wanted_layers_and_steps_are_captured():
    cap = _capture([fake_prompt(["a"])], window=Window(0.5, 1.0), layers="up")
    assert cap.wants(2, 2, "output") and cap.wants(3, 2, "output")
    assert not cap.wants(1, 2, "output")  # before the window
    assert not cap.wants(2, 2, "input")  # down blocks not chosen
    assert not cap.wants(2, 4, "output")  # another resolution


def test_repeated_contexts_are_summed_back_to_the_prompt():
    """ComfyUI repeats a shorter prompt's context to a common length: the captured map of each token is the
    sum over its copies, which equals the map of the unrepeated prompt."""
    source, target = fake_prompt(["a", "cat"]), fake_prompt(["a", "dog"])
    L = source.length
    run = EditRun(EditBatch(source, (make_edit(source, target),)), 4, None,
                  capture=_capture([source, target], self_attention=False))
    q, k_once, v_once = torch.randn(2, 6, 8), torch.randn(2, L, 8), torch.randn(2, L, 8)
    k, v = k_once.repeat(1, 3, 1), v_once.repeat(1, 3, 1)  # [2, 3L, 8]
    call = LayerCall(source_row=0, edit_rows=(1,), heads=HEADS, spatial=(2, 3), downsample=2, block="input", layer=0)
    run.begin_evaluation(1.0, [1.0, 0.5, 0.2, 0.1, 0.0])
    run.cross_attention(q, k, v, call, vanilla_attention)
    maps = _maps(run)
    direct = probabilities(q[0], k_once[0], HEADS).mean(0).reshape(2, 3, L)
    torch.testing.assert_close(maps.cross[0], direct)
    assert maps.cross[1].shape == (2, 3, L)


def test_edit_maps_are_the_injected_ones():
    """Inside the cross window the edit's captured map is the source map carried over by the word swap."""
    source, target = fake_prompt(["a", "cat"]), fake_prompt(["a", "dog"])
    run = EditRun(EditBatch(source, (make_edit(source, target, cross_replace=1.0),)), 4, None,
                  capture=_capture([source, target], self_attention=False))
    L = source.length
    q, k, v = torch.randn(2, 6, 8), torch.randn(2, L, 8), torch.randn(2, L, 8)
    call = LayerCall(source_row=0, edit_rows=(1,), heads=HEADS, spatial=(2, 3), downsample=2, block="output", layer=0)
    run.begin_evaluation(1.0, [1.0, 0.5, 0.2, 0.1, 0.0])
    run.cross_attention(q, k, v, call, vanilla_attention)
    maps = _maps(run)
    torch.testing.assert_close(maps.cross[1], maps.cross[0])  # a one-to-one swap carries every column over


def test_word_maps_sum_tokens_and_occurrences():
    pieces = (TokenPiece(0, "start"), TokenPiece(10, "word", "a", True), TokenPiece(11, "word", "sun", False),
              TokenPiece(12, "word", "flower", True), TokenPiece(10, "word", "a", True),
              TokenPiece(13, "word", "cat", True), TokenPiece(1, "end"), TokenPiece(1, "pad"))
    tokens = PromptTokens("a sunflower a cat", pieces, chunk_length=8)
    assert prompt_words(tokens) == [("a",), ("sunflower",), ("cat",)]
    cross = torch.rand(2, 2, 8)
    cap = _capture([tokens], num_steps=1, self_attention=False)
    cap.add_cross(0, 0, cross.reshape(1, 4, 8), (2, 2), 0)
    got = dict(word_maps(cap.result(), 0))
    torch.testing.assert_close(got["sunflower"], cross[..., 2] + cross[..., 3])  # a word's two tokens
    torch.testing.assert_close(got["a"], cross[..., 1] + cross[..., 4])  # both occurrences
    (label, phrase_map), = word_maps(cap.result(), 0, [("a", "cat")])
    assert label == "a cat"
    torch.testing.assert_close(phrase_map, cross[..., 4] + cross[..., 5])


def test_self_maps_of_injected_edits_are_the_source_maps():
    source, target = fake_prompt(["a", "cat"]), fake_prompt(["a", "dog"])
    edit = make_edit(source, target, self_replace=1.0, self_min_downsample=1)
    run = EditRun(EditBatch(source, (edit,)), 4, None, capture=_capture([source, target]))
    q, k, v = torch.randn(2, 6, 8), torch.randn(2, 6, 8), torch.randn(2, 6, 8)
    call = LayerCall(source_row=0, edit_rows=(1,), heads=HEADS, spatial=(2, 3), downsample=2, block="input", layer=0)
    run.begin_evaluation(1.0, [1.0, 0.5, 0.2, 0.1, 0.0])
    run.self_attention(q, k, v, call, vanilla_attention)
    run.cross_attention(q, torch.randn(2, source.length, 8), torch.randn(2, source.length, 8), call, vanilla_attention)
    maps = _maps(run)
    assert maps.self_maps is not None
    expected = probabilities(q[0], k[0], HEADS).mean(0)
    torch.testing.assert_close(maps.self_maps[0], expected)
    torch.testing.assert_close(maps.self_maps[1], expected)


def test_first_self_component_separates_two_regions():
    """Pixels that attend within their own half: the top component is bright on one half, dark on the other."""
    h, w = 4, 4
    left = (torch.arange(w) < 2).repeat(h)  # [16]
    same = (left[:, None] == left[None, :]).float()
    self_map = same / same.sum(-1, keepdim=True)
    cap = _capture([fake_prompt(["a"])], num_steps=1)
    cap.add_cross(0, 0, torch.rand(1, 16, 8), (h, w), 0)
    cap.add_self(0, self_map[None])
    (first,) = self_components(cap.result(), 0, count=1)
    values = first.flatten()
    assert values[left].std() < 1e-6 and values[~left].std() < 1e-6
    assert abs(values[left].mean() - values[~left].mean()) > 0.99


def test_a_second_pass_within_one_evaluation_adds_nothing_to_the_maps():
    """A node that runs the model again within an evaluation (PerturbedAttentionGuidance's perturbed pass)
    still gets the edits injected, but its maps are not averaged in: one call per layer and evaluation."""
    source, target = fake_prompt(["a", "cat"]), fake_prompt(["a", "dog"])
    L = source.length
    run = EditRun(EditBatch(source, (make_edit(source, target),)), 4, None,
                  capture=_capture([source, target], self_attention=False))
    call = LayerCall(source_row=0, edit_rows=(1,), heads=HEADS, spatial=(2, 3), downsample=2, block="input", layer=0)
    q, k, v = torch.randn(2, 6, 8), torch.randn(2, L, 8), torch.randn(2, L, 8)
    run.begin_evaluation(1.0, [1.0, 0.5, 0.2, 0.1, 0.0])
    first, _ = run.cross_attention(q, k, v, call, vanilla_attention)
    second, changed = run.cross_attention(torch.randn(2, 6, 8), k, v, call, vanilla_attention)
    assert changed == (1,)  # still injected
    torch.testing.assert_close(_maps(run).cross[0], probabilities(q[0], k[0], HEADS).mean(0).reshape(2, 3, L))


def test_default_words_keep_emoji_and_leave_out_punctuation():
    pieces = (TokenPiece(0, "start"), TokenPiece(10, "word", "a", True), TokenPiece(11, "word", "🐱", True),
              TokenPiece(12, "word", ",", True), TokenPiece(13, "word", "café", True),
              TokenPiece(14, "word", "!", True), TokenPiece(1, "end"), TokenPiece(1, "pad"))
    tokens = PromptTokens("a 🐱, café!", pieces, chunk_length=8)
    assert prompt_words(tokens) == [("a",), ("🐱",), ("café",)]
