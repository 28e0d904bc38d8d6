"""P2P Attention Segments and P2P Local Blend's mask input through ComfyUI's own executor (tiny random SD1.5-shaped
model): the masks have the latent's shape, a given mask is the blend region, bad inputs name the input."""

import pytest
import torch

from p2p_graphs import p2p_graph, samples
from tools.host import HostError

CAPTURE = {"enabled": True, "resolution": "auto", "start": 0.0, "end": 1.0, "layers": "down+up", "per_step": False,
           "self_attention": True}
SEGMENTS = {"item": 0, "segments": 4, "words": "circle, square", "threshold": 0.3}


def captured(width=128, height=128, **capture):
    """A P2P run that captures self-attention, and a P2P Attention Segments node on it."""
    g, n = p2p_graph(steps=4, width=width, height=height)
    n["p2p"].inputs["capture"] = g.node("P2PAttentionCapture", "capture", **{**CAPTURE, **capture})
    return g, n


def add_segments(g, n, **inputs):
    return g.node("P2PAttentionSegments", "segments", attention=n["p2p"].out(1), **{**SEGMENTS, **inputs})


@pytest.mark.parametrize("width, height", [(128, 128), (192, 128)], ids=["square", "wide"])
def test_segment_masks_have_the_latents_shape_and_unite_into_the_mask(host, width, height):
    g, n = captured(width, height)
    decoded = g.node("VAEDecode", "decode", samples=n["p2p"], vae=n["loader"].out(2))
    add_segments(g, n, images=decoded)
    out = host.run(g.prompt(), keep=("segments", "decode"))
    image, masks, mask, labels = out["segments"]
    latent = (height // 8, width // 8)
    assert masks.shape == (2, *latent) and mask.shape == (1, *latent)
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(mask[0], masks.amax(dim=0))
    assert len(labels.split(", ")) == SEGMENTS["segments"]
    assert all(label.split(": ")[1] in ("circle", "square", "background") for label in labels.split(", "))
    # picture | segments | one tile per segment, side by side 4 px apart
    tiles = 2 + SEGMENTS["segments"]
    tile_width = (image.shape[2] - 4 * (tiles - 1)) / tiles
    assert image.shape[0] == 1 and tile_width.is_integer() and tile_width / width == round(tile_width / width)


def test_the_mask_of_a_segment_is_a_blend_region_that_keeps_the_source_outside(host):
    """Segments of the source's attention give a mask; a second run blends with it alone (no words): outside
    the mask the edit is the source bit for bit, inside it is edited."""
    g, n = captured()
    segments = add_segments(g, n, words="circle", threshold=0.0)  # threshold 0: every segment is the circle's
    blend = g.node("P2PLocalBlend", "blend", edit=n["edit"], source_words="", target_words="", threshold=0.3,
                   start=0.0, mask=segments.out(2))
    g.node("P2PSampler", "blended", **{**n["p2p"].inputs, "edit": blend, "capture": None})
    out = host.run(g.prompt(), keep=("segments", "blended"))
    region = out["segments"][2][0].bool()  # [16, 16]
    final = samples(out, "blended")
    assert region.any()
    assert torch.equal(final[1][:, ~region], final[0][:, ~region])
    assert not torch.equal(final[1][:, region], final[0][:, region])


def _half_mask(g, node_id, side):
    """A MASK of side x side whose left half is 1."""
    empty = g.node("SolidMask", f"{node_id}_empty", value=0.0, width=side, height=side)
    half = g.node("SolidMask", f"{node_id}_half", value=1.0, width=side // 2, height=side)
    return g.node("MaskComposite", node_id, destination=empty, source=half, x=0, y=0, operation="add")


def test_a_drawn_mask_at_pixel_or_latent_size_is_the_same_region(host):
    g, n = p2p_graph(steps=4)
    for node_id, side in (("pixels", 128), ("cells", 16)):
        blend = g.node("P2PLocalBlend", f"blend_{node_id}", edit=n["edit"], source_words="", target_words="",
                       threshold=0.3, start=0.0, mask=_half_mask(g, node_id, side))
        g.node("P2PSampler", f"p2p_{node_id}", **{**n["p2p"].inputs, "edit": blend})
    out = host.run(g.prompt(), keep=("p2p_pixels", "p2p_cells"))
    pixels, cells = samples(out, "p2p_pixels"), samples(out, "p2p_cells")
    assert torch.equal(pixels, cells)
    assert torch.equal(pixels[1][:, :, 8:], pixels[0][:, :, 8:])  # the right half is the source's
    assert not torch.equal(pixels[1][:, :, :8], pixels[0][:, :, :8])


def test_a_mask_joins_the_words_region(host):
    """Words and a mask: the blend region holds the mask's cells and the words' cells."""
    g, n = captured()
    words = dict(edit=n["edit"], source_words="red circle", target_words="blue circle", threshold=0.8, start=0.0)
    g.node("P2PSampler", "words_only", **{**n["p2p"].inputs, "edit": g.node("P2PLocalBlend", "b1", **words)})
    both = g.node("P2PLocalBlend", "b2", **words, mask=_half_mask(g, "half", 16))
    g.node("P2PSampler", "both", **{**n["p2p"].inputs, "edit": both})
    out = host.run(g.prompt(), keep=("words_only", "both"))
    words_mask, both_mask = (out[k][1].maps.blend_masks[0] for k in ("words_only", "both"))
    assert both_mask[:, :8].all()
    assert (both_mask | ~words_mask).all()  # the words' cells stay in
    assert not torch.equal(words_mask, both_mask)


@pytest.mark.parametrize("capture, inputs, width, name, message", [
    ({"self_attention": False}, {}, 128, "attention", "holds no self-attention maps"),
    ({}, {"item": 2}, 128, "item", "only the source"),
    ({}, {"words": "triangle"}, 128, "words", "triangle not in the prompt of item 0"),
    ({"resolution": "1/4"}, {"segments": 5}, 64, "segments", "is 5, more than the 2x2 = 4 cells"),
], ids=["no_self_maps", "item", "word", "more_segments_than_cells"])
def test_bad_inputs_name_the_input(host, capture, inputs, width, name, message):
    g, n = captured(width, width, **capture)
    add_segments(g, n, **inputs)
    with pytest.raises(HostError, match=rf"P2PAttentionSegments: input '{name}': .*{message}"):
        host.run(g.prompt(), keep=("segments",))


def test_images_of_another_batch_are_refused(host):
    g, n = captured()
    other = g.node("EmptyImage", "other", width=128, height=128, batch_size=3, color=0)
    add_segments(g, n, images=other)
    with pytest.raises(HostError, match=r"P2PAttentionSegments: input 'images': got 3 pictures but the sampler "
                       r"made 2"):
        host.run(g.prompt(), keep=("segments",))


def test_the_node_view_gets_a_chip_per_segment_whose_map_is_its_mask(host):
    """With the pictures connected, the node sends the heatmap view (web/p2p_attention.js) its data: one chip
    per segment, labelled as the `labels` output, each map the segment's cells (0/1), together covering the
    picture once."""
    g, n = captured()
    decoded = g.node("VAEDecode", "decode", samples=n["p2p"], vae=n["loader"].out(2))
    add_segments(g, n, images=decoded)
    out = host.run(g.prompt(), keep=("segments",))
    (executed,) = [e for e in host.server.of("executed") if e["node"] == "segments"]
    data = executed["output"]["p2p_attention"][0]
    (entry,) = data["items"]
    assert entry["words"] == out["segments"][3].split(", ")
    cells = torch.tensor([m["values"] for m in entry["maps"]])  # [segments, h * w]
    assert set(cells.unique().tolist()) == {0.0, 1.0} and torch.equal(cells.sum(0), torch.ones(cells.shape[1]))
    assert executed["output"]["images"]  # the labelled grid is still previewed


def test_without_pictures_the_node_only_previews_its_grid(host):
    g, n = captured()
    add_segments(g, n)
    host.run(g.prompt(), keep=("segments",))
    (executed,) = [e for e in host.server.of("executed") if e["node"] == "segments"]
    assert "p2p_attention" not in executed["output"] and executed["output"]["images"]
