"""The engine's joint-attention (MM-DiT) editing against the joint map materialised: the fused kernel's log-
normaliser, the edited image-to-text part, the captured maps, and both token layouts (Flux [R, H, T+I, d], SD3
[R, T+I, H*d])."""

import pytest
import torch
import torch.nn.functional as F
from test_engine_math import HEADS, fake_prompt

from p2p import AttentionCapture, CaptureSpec, EditBatch, EditRun, JointCall, LocalBlend, make_edit
from p2p.attention import mix_cross
from p2p.joint import attention_with_lse, heads_first

TEXT, IMAGE, D = 8, 6, 4  # fake_prompt's chunk of 8 tokens; a 2x3 grid of image tokens


def sdpa_attend(q, k, v, mask):
    """A host attention in the [R, L, H*d] output layout."""
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # [R, H, L, d]
    return out.transpose(1, 2).reshape(out.shape[0], out.shape[2], -1)


def joint_inputs(rows=2, seed=0):
    torch.manual_seed(seed)
    return [torch.randn(rows, HEADS, TEXT + IMAGE, D) for _ in range(3)]


def joint_run(source_words, target_words, *, num_steps=4, capture=None, **edit):
    src, tgt = fake_prompt(source_words), fake_prompt(target_words)
    batch = EditBatch(src, (make_edit(src, tgt, **edit),))
    run = EditRun(batch, num_steps, capture=capture)
    run.begin_evaluation(1.0, [1.0, 0.0])
    return run


def expected_edit_row(q, k, v, edit_row, edited_text_map, mask=0):
    """The edit row materialised: its joint map, whose image rows keep their text mass and their image-to-image
    part, with the map over the text replaced by `edited_text_map` [H, I, T]."""
    joint = torch.softmax(q[edit_row] @ k[edit_row].transpose(-1, -2) * D**-0.5 + mask, dim=-1)  # [H, L, L]
    mass = joint[:, TEXT:, :TEXT].sum(-1, keepdim=True)  # [H, I, 1]
    joint[:, TEXT:, :TEXT] = mass * edited_text_map
    return joint @ v[edit_row]  # [H, L, d]


def text_map(q, k, row, mask=None):
    """[H, I, T]: the row's image-to-text map, normalised over the text."""
    scores = q[row, :, TEXT:] @ k[row, :, :TEXT].transpose(-1, -2) * D**-0.5
    return torch.softmax(scores if mask is None else scores + mask[..., TEXT:, :TEXT], dim=-1)


@pytest.mark.parametrize("mask", [None, "bool", "additive"])
def test_the_fused_log_normaliser_is_the_log_sum_exp_of_the_scores(mask):
    q, k, v = joint_inputs()
    m = None
    if mask is not None:
        keep = torch.rand(TEXT + IMAGE, TEXT + IMAGE) > 0.3
        keep[:, 0] = True  # every query keeps a key
        m = keep if mask == "bool" else torch.randn(TEXT + IMAGE, TEXT + IMAGE)
    additive = None if m is None else (torch.zeros(m.shape).masked_fill(~m, float("-inf")) if m.dtype == torch.bool
                                       else m)
    scores = q @ k.transpose(-1, -2) * D**-0.5 + (0 if additive is None else additive)
    fused = attention_with_lse(q, k, v, additive)
    chunked = attention_with_lse(q.to(torch.float64), k.to(torch.float64), v.to(torch.float64),
                                 None if additive is None else additive.to(torch.float64), chunk=5)  # the fallback
    for out, lse in (fused, chunked):
        torch.testing.assert_close(lse.float(), torch.logsumexp(scores, -1), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out.float(), torch.softmax(scores, -1) @ v, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("layout, heads_per_group", [("flux", HEADS), ("sd3", HEADS), ("flux", 1)])
@pytest.mark.parametrize("target, mode, weights", [
    (["a", "dog"], "replace", ()),  # word swap
    (["a", "big", "cat"], "refine", ()),  # a word added: it keeps its own column
    (["a", "dog"], "replace", ((["dog"], 3.0),)),  # re-weighted
])
def test_inside_the_cross_window_the_edit_image_rows_take_the_mapped_source_text_map(
        monkeypatch, layout, heads_per_group, target, mode, weights):
    """The edit's image-to-text map (over the text) is mix_cross of the source's; its text mass and its image-to-image
    part are its own; its text rows and the source row are the host's. The maps are made a group of heads at a time
    (one head per group: as a large picture's are)."""
    monkeypatch.setattr("p2p.runtime.MAP_ELEMENTS", heads_per_group * IMAGE * TEXT)
    run = joint_run(["a", "cat"], target, mode=mode, cross_replace=1.0, self_replace=0.0)
    if weights:
        run = EditRun(EditBatch(run.batch.source, (run.batch.edits[0].reweighted(weights),)), 4)
        run.begin_evaluation(1.0, [1.0, 0.0])
    q, k, v = joint_inputs()
    edit = run.batch.edits[0]
    edited = mix_cross(text_map(q, k, 0), text_map(q, k, 1), edit.mapping.weights, edit.mapping.own,
                       edit.cross_alphas(4)[0], edit.equalizer())
    expected = expected_edit_row(q, k, v, 1, edited)
    call = JointCall(0, (1,), TEXT, heads=HEADS, spatial=(2, 3))
    args = [q, k, v]
    if layout == "sd3":
        args = [x.transpose(1, 2).reshape(2, TEXT + IMAGE, HEADS * D) for x in args]
        call = JointCall(0, (1,), TEXT, heads=HEADS, spatial=(2, 3), token_axis=1)

    def attend(q_, k_, v_, mask):
        return sdpa_attend(*(heads_first(x, call.token_axis, HEADS) for x in (q_, k_, v_)), mask)

    out, changed = run.joint_attention(args[0], args[1], args[2], call, attend)
    assert changed == (1,)
    torch.testing.assert_close(heads_first(out, 1, HEADS)[1], expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(heads_first(out, 1, HEADS)[0], F.scaled_dot_product_attention(q, k, v)[0])
    if mode == "replace" and not weights:  # the same map over the text: the source's
        assert not torch.allclose(text_map(q, k, 1), edited)


def test_outside_the_windows_the_host_computes_every_row():
    run = joint_run(["a", "cat"], ["a", "dog"], cross_replace=0.0, self_replace=0.0)
    q, k, v = joint_inputs()
    calls = []

    def attend(q_, k_, v_, mask):
        calls.append(q_.shape[0])
        return sdpa_attend(q_, k_, v_, mask)

    out, changed = run.joint_attention(q, k, v, JointCall(0, (1,), TEXT, heads=HEADS, spatial=(2, 3)), attend)
    assert changed == () and calls == [2] and torch.equal(out, sdpa_attend(q, k, v, None))


def test_identical_prompts_in_both_windows_give_the_source_bit_for_bit():
    """With the host's kernel the same as the fused one, the edit row of an identical prompt is the source row."""
    run = joint_run(["a", "cat"], ["a", "cat"], cross_replace=1.0, self_replace=1.0)
    q, k, v = joint_inputs()
    for x in (q, k, v):
        x[1, :, :TEXT] = x[0, :, :TEXT]  # the same prompt: the same text tokens
    v[1] = v[0]
    out, changed = run.joint_attention(q, k, v, JointCall(0, (1,), TEXT, heads=HEADS, spatial=(2, 3)), sdpa_attend)
    assert changed == (1,) and torch.equal(out[1], out[0])


def test_a_host_mask_is_applied_to_every_row():
    """Chroma passes an attention mask (padding text tokens masked out): the edited row honours it too."""
    run = joint_run(["a", "cat"], ["a", "dog"], cross_replace=1.0, self_replace=0.0)
    q, k, v = joint_inputs()
    keep = torch.ones(2, 1, TEXT + IMAGE, TEXT + IMAGE, dtype=torch.bool)
    keep[..., TEXT - 2 : TEXT] = False  # the last two text tokens are padding
    additive = torch.zeros(keep.shape).masked_fill(~keep, float("-inf"))
    out, _ = run.joint_attention(q, k, v, JointCall(0, (1,), TEXT, heads=HEADS, spatial=(2, 3)), sdpa_attend, keep)
    edit = run.batch.edits[0]
    edited = mix_cross(text_map(q, k, 0, additive[0]), text_map(q, k, 1, additive[1]), edit.mapping.weights,
                       edit.mapping.own, edit.cross_alphas(4)[0], edit.equalizer())
    expected = expected_edit_row(q, k, v, 1, edited, additive[1])
    torch.testing.assert_close(heads_first(out, 1, HEADS)[1], expected, atol=1e-5, rtol=1e-5)
    assert edited[..., TEXT - 2 :].abs().max() == 0


def test_the_captured_maps_are_the_maps_in_effect():
    """Inside the cross window the edit's captured image-to-text map is the mapped source map (identity here: the
    source's), outside it its own; the source's is its map over its text. Self maps: the image-to-image part."""
    prompts = (fake_prompt(["a", "cat"]), fake_prompt(["a", "dog"]))
    capture = AttentionCapture(CaptureSpec(), prompts, num_steps=4, downsample=1)
    run = joint_run(["a", "cat"], ["a", "dog"], capture=capture, cross_replace=0.5, self_replace=0.0)
    q, k, v = joint_inputs()
    call = JointCall(0, (1,), TEXT, heads=HEADS, spatial=(2, 3))
    for sigma in (1.0, 0.75, 0.5, 0.25):  # steps 0, 1 inside the cross window; 2, 3 outside
        run.begin_evaluation(sigma, [1.0, 0.75, 0.5, 0.25, 0.0])
        run.joint_attention(q, k, v, call, sdpa_attend)
    maps = capture.result()
    assert maps is not None and maps.self_maps is not None
    source, own = text_map(q, k, 0).mean(0), text_map(q, k, 1).mean(0)  # [I, T]
    torch.testing.assert_close(maps.cross[0], source.reshape(2, 3, TEXT))
    torch.testing.assert_close(maps.cross[1], ((source + own) / 2).reshape(2, 3, TEXT))
    image = torch.softmax(q[1, :, TEXT:] @ k[1, :, TEXT:].transpose(-1, -2) * D**-0.5, -1).mean(0)
    torch.testing.assert_close(maps.self_maps[1], image)


@pytest.mark.parametrize("cross_replace", [1.0, 0.0])
def test_a_shorter_prompt_attends_over_its_own_tokens(cross_replace):
    """Prompts of a batch are padded to the longest (Chroma does not pad them to one length): a shorter edit's row
    is its attention over its own 6 text tokens and the image, as it would be alone, with zeros at the padding."""
    src, tgt = fake_prompt(["a", "cat"]), fake_prompt(["a", "dog"], chunk=6)
    run = EditRun(EditBatch(src, (make_edit(src, tgt, cross_replace=cross_replace, self_replace=0.0),)), 4)
    run.begin_evaluation(1.0, [1.0, 0.0])
    q, k, v = joint_inputs()
    out, _ = run.joint_attention(q, k, v, JointCall(0, (1,), TEXT, heads=HEADS, spatial=(2, 3)), sdpa_attend)
    kept = [*range(6), *range(TEXT, TEXT + IMAGE)]
    q6, k6, v6 = (x[:, :, kept] for x in (q, k, v))
    own = torch.softmax(q6[1, :, 6:] @ k6[1, :, :6].transpose(-1, -2) * D**-0.5, dim=-1)
    edited = own
    if cross_replace:
        edit = run.batch.edits[0]
        edited = mix_cross(text_map(q, k, 0), own, edit.mapping.weights, edit.mapping.own, edit.cross_alphas(4)[0],
                           edit.equalizer())
    joint = torch.softmax(q6[1] @ k6[1].transpose(-1, -2) * D**-0.5, dim=-1)
    joint[:, 6:, :6] = joint[:, 6:, :6].sum(-1, keepdim=True) * edited
    edit_row = heads_first(out, 1, HEADS)[1]
    torch.testing.assert_close(edit_row[:, kept], joint @ v6[1], atol=1e-5, rtol=1e-5)
    assert torch.equal(edit_row[:, 6:TEXT], torch.zeros(HEADS, 2, D))
    torch.testing.assert_close(heads_first(out, 1, HEADS)[0], F.scaled_dot_product_attention(q, k, v)[0])


@pytest.mark.parametrize("layer, taken", [(("double", 12), True), (("double", 3), False)])
def test_local_blend_takes_its_maps_from_the_chosen_blocks(layer, taken):
    """On Flux, Chroma and SD3 local blend reads the blocks whose image-to-text maps locate words best (Shin et al.)."""
    src, tgt = fake_prompt(["a", "cat"]), fake_prompt(["a", "dog"])
    blend = LocalBlend(source_positions=src.find(["cat"]), target_positions=tgt.find(["dog"]))
    edit = make_edit(src, tgt, cross_replace=0.0, self_replace=0.0).blended(blend)
    run = EditRun(EditBatch(src, (edit,)), 4, blend_layers=frozenset({("double", 12)}))
    run.begin_evaluation(1.0, [1.0, 0.0])
    q, k, v = joint_inputs()
    run.joint_attention(q, k, v, JointCall(0, (1,), TEXT, heads=HEADS, spatial=(2, 3), layer=layer), sdpa_attend)
    maps = run.blend_maps[0]
    assert maps is not None and (set(maps.sums) == {"source", "target"}) == taken


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_fused_log_normaliser_is_checked_before_use(monkeypatch, dtype):
    """A kernel whose log-sum-exp were of another convention (base 2) is caught by the check, and the run then
    computes the edited rows the chunked way, the same result as with a correct kernel."""
    from p2p import joint

    assert joint.fused_lse_agrees(torch.device("cpu"), dtype)
    q, k, v = joint_inputs()
    correct = joint_run(["a", "cat"], ["a", "dog"], cross_replace=1.0, self_replace=0.0)
    expected, _ = correct.joint_attention(q, k, v, JointCall(0, (1,), TEXT, heads=HEADS, spatial=(2, 3)), sdpa_attend)
    real = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu

    def base_two(*args, **kwargs):
        out, lse = real(*args, **kwargs)[:2]
        return out, lse / torch.log(torch.tensor(2.0))

    monkeypatch.setattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", base_two)
    assert not joint.fused_lse_agrees(torch.device("cpu"), dtype)
    run = joint_run(["a", "cat"], ["a", "dog"], cross_replace=1.0, self_replace=0.0)
    out, _ = run.joint_attention(q, k, v, JointCall(0, (1,), TEXT, heads=HEADS, spatial=(2, 3)), sdpa_attend)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
