"""The edit-description nodes through ComfyUI's own executor: each bad input gets one message that names the
node and the input at fault; inputs that are valid but can change nothing get a warning."""

import math

import pytest

from p2p_graphs import p2p_graph, samples
from tools.host import HostError

EDIT_FRACTIONS = ("cross_replace", "self_replace")
BLEND_FRACTIONS = ("threshold", "start")


def run_error(host, g, keep) -> str:
    with pytest.raises(HostError) as info:
        host.run(g.prompt(), keep=keep)
    return str(info.value)


def add_blend(g, n, **inputs):
    blend = {"source_words": "circle", "target_words": "circle", "threshold": 0.3, "start": 0.2,
             "subtract_words": "", **inputs}
    return g.node("P2PLocalBlend", "b", edit=n["edit"], **blend)


def add_second_edit(g, n, clip):
    return g.node("P2PEditSpec", "edit2", clip=clip, source_prompt=n["edit"].inputs["source_prompt"],
                  target_prompt="a red circle on the left and a small star", mode="auto", cross_replace=0.8,
                  self_replace=0.4, self_layers="coarse", previous=n["edit"])


def edit_of(outputs, node_id):
    return outputs[node_id][0].batch.edits[-1]


# -- 1. the input at fault is the one named ------------------------------------------------------------------


def test_a_swap_of_unequal_word_counts_blames_the_target_even_with_a_schedule(host):
    g, n = p2p_graph("a red circle", "a red circle with stripes", mode="replace", word_schedule="stripes: 0.5")
    message = run_error(host, g, keep=("edit",))
    assert "P2PEditSpec: input 'target_prompt'" in message and "same number of words" in message
    assert "word_schedule" not in message


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("node_id, name, others", [
    ("edit", "cross_replace", EDIT_FRACTIONS), ("edit", "self_replace", EDIT_FRACTIONS),
    ("b", "threshold", BLEND_FRACTIONS), ("b", "start", BLEND_FRACTIONS),
])
def test_a_fraction_that_is_not_a_number_is_refused_naming_it(host, value, node_id, name, others):
    """NaN passes ComfyUI's min/max checks (every comparison with NaN is false), so the node refuses it;
    infinities are refused by ComfyUI's validator, which names the input too."""
    g, n = p2p_graph()
    add_blend(g, n)
    g.nodes[node_id].inputs[name] = value
    message = run_error(host, g, keep=("b",))
    node = g.nodes[node_id].class_type
    assert node in message and name in message
    assert not [other for other in others if other != name and other in message]
    if math.isnan(value):
        assert f"{node}: input '{name}': must be a number within 0..1, got nan" in message


# -- 2. `previous` from another text encoder ---------------------------------------------------------------


@pytest.mark.parametrize("other_clip, expected", [
    (lambda g, n: g.node("RandomModelLoader", "sdxl", shape="sdxl", seed=0, dtype="float32").out(1),
     "its CLIP has width 32, the CLIP connected here 64"),
    (lambda g, n: g.node("RandomModelLoader", "other", shape="sd15", seed=5, dtype="float32").out(1),
     "encodes the source prompt differently"),
    (lambda g, n: g.node("CLIPSetLastLayer", "skip", clip=n["clip"], stop_at_clip_layer=-2),
     "encodes the source prompt differently"),
])
def test_previous_encoded_by_another_text_encoder_is_refused(host, other_clip, expected):
    g, n = p2p_graph()
    n["p2p"].inputs["edit"] = add_second_edit(g, n, other_clip(g, n))
    message = run_error(host, g, keep=("p2p",))
    assert "P2PEditSpec: input 'previous': was encoded by another text encoder" in message
    assert expected in message


@pytest.mark.parametrize("same_clip", [
    lambda g, n: g.node("CLIPSetLastLayer", "clone", clip=n["clip"], stop_at_clip_layer=-1),  # clip.clone()
    lambda g, n: g.node("RandomModelLoader", "again", shape="sd15", seed=0, dtype="float32").out(1),
])
def test_previous_from_a_copy_of_the_same_text_encoder_is_accepted(host, same_clip):
    """Another CLIP object that encodes alike (a clone, a second loader of the same checkpoint) is the same
    text encoder."""
    g, n = p2p_graph()
    n["p2p"].inputs["edit"] = add_second_edit(g, n, same_clip(g, n))
    assert samples(host.run(g.prompt(), keep=("p2p",)), "p2p").shape[0] == 3


# -- 3. a local blend that cannot change anything is reported ------------------------------------------------


@pytest.mark.parametrize("inputs, name", [
    ({"threshold": 1.0}, "threshold"),
    ({"start": 1.0}, "start"),
    ({"subtract_words": "circle"}, "subtract_words"),
    ({"source_words": "", "target_words": "blue", "subtract_words": "blue circle"}, "subtract_words"),
])
def test_a_local_blend_that_cannot_change_anything_is_reported(host, caplog, inputs, name):
    g, n = p2p_graph()
    add_blend(g, n, **inputs)
    with caplog.at_level("WARNING", logger="prompt_to_prompt"):
        host.run(g.prompt(), keep=("b",), fresh=True)
    warnings = [r.getMessage() for r in caplog.records if r.name == "prompt_to_prompt"]
    assert len(warnings) == 1
    assert f"P2PLocalBlend: input '{name}'" in warnings[0] and "cannot change anything" in warnings[0]


def test_a_local_blend_that_can_change_something_is_not_reported(host, caplog):
    g, n = p2p_graph()
    add_blend(g, n, subtract_words="square")
    with caplog.at_level("WARNING", logger="prompt_to_prompt"):
        host.run(g.prompt(), keep=("b",), fresh=True)
    assert not [r for r in caplog.records if r.name == "prompt_to_prompt"]


# -- 4. scientific notation --------------------------------------------------------------------------------


def test_weights_and_schedules_accept_scientific_notation(host):
    g, n = p2p_graph(word_schedule="blue: 2.5E-1")
    g.node("P2PReweight", "rw", edit=n["edit"], weights="blue: 1e-3, small square: -1e-1")
    edit = edit_of(host.run(g.prompt(), keep=("rw",)), "rw")
    blue, square = edit.target.find(["blue"]), edit.target.find(["square"])
    assert {window.end for p, window in edit.word_windows if p in blue} == {0.25}
    assert {weight for p, weight in edit.weights if p in blue} == {1e-3}
    assert {weight for p, weight in edit.weights if p in square} == {-0.1}


# -- 5. a word given twice in one input -------------------------------------------------------------------


@pytest.mark.parametrize("node, name, text, expected", [
    ("P2PReweight", "weights", "blue: 2, blue: 3", '"blue" is given twice'),
    ("P2PReweight", "weights", "small square: 2, Square: 0.5", '"small square" and "square" both name the word'),
    ("P2PEditSpec", "word_schedule", "blue: 0.2, Blue: 0.5", '"blue" is given twice'),
])
def test_a_word_given_twice_in_one_input_is_refused(host, node, name, text, expected):
    g, n = p2p_graph(word_schedule=text if name == "word_schedule" else "")
    g.node("P2PReweight", "rw", edit=n["edit"], weights=text if name == "weights" else "blue: 2")
    message = run_error(host, g, keep=("rw",))
    assert f"{node}: input '{name}': {expected}" in message


def test_two_reweight_nodes_multiply(host):
    g, n = p2p_graph()
    first = g.node("P2PReweight", "rw1", edit=n["edit"], weights="blue: 2")
    g.node("P2PReweight", "rw2", edit=first, weights="blue: 3")
    edit = edit_of(host.run(g.prompt(), keep=("rw2",)), "rw2")
    blue = list(edit.target.find(["blue"]))
    assert edit.equalizer()[blue].tolist() == [6.0] * len(blue)


# -- 6. per-step rows of a long prompt ------------------------------------------------------------------------

WORDS = ["red", "green", "blue", "circle", "square", "star", "moon", "sun", "tree", "house", "river", "lake",
         "hill", "road", "cloud", "bird", "fish", "boat", "cat", "dog", "horse", "car", "train", "lamp"]


def test_per_step_rows_of_many_words_are_capped(host, pack, caplog):
    """The grid is as wide as its widest row: a per-step capture of a 24-word prompt keeps every row to
    GRID_COLUMNS heatmaps (the words row wraps; per-step rows show the first words) and says what it left out."""
    columns = pack.adapter.attention_view.GRID_COLUMNS
    assert len(WORDS) > columns
    source = " ".join(WORDS)
    g, n = p2p_graph(source, source.replace("red", "pink"), steps=3)
    n["p2p"].inputs["capture"] = g.node("P2PAttentionCapture", "capture", enabled=True, resolution="auto",
                                        start=0.0, end=1.0, layers="down+up", per_step=True, self_attention=False)
    images = g.node("VAEDecode", "decode", samples=n["p2p"].out(0), vae=n["loader"].out(2))
    g.node("P2PAttentionMaps", "view", attention=n["p2p"].out(1), images=images, item=0, components=1, words="")
    with caplog.at_level("WARNING", logger="prompt_to_prompt"):
        heatmaps, _ = host.run(g.prompt(), fresh=True)["view"]
    tile, gap, label = 256, 4, 18  # 128-pixel pictures scaled x2, then a label under each
    word_rows, step_rows = -(-len(WORDS) // columns), 3
    rows = word_rows + step_rows
    assert heatmaps.shape == (1, rows * (tile + label) + (rows - 1) * gap, (columns + 1) * (tile + gap) - gap, 3)
    warnings = [r.getMessage() for r in caplog.records if r.name == "prompt_to_prompt"]
    assert any(f"show the first {columns} of {len(WORDS)} words ({len(WORDS) - columns} left out)" in w
               and "'words'" in w for w in warnings)
