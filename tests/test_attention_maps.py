"""Attention capture and P2P Attention Maps through ComfyUI's own executor (tiny random SD1.5-shaped model)."""

import numpy as np
import pytest
import torch

from p2p_graphs import p2p_graph, samples
from tools.host import HostError

CAPTURE = {"enabled": True, "resolution": "auto", "start": 0.0, "end": 1.0, "layers": "down+up", "per_step": False,
           "self_attention": True}
LONG = ", ".join(["a red circle on the left and a small square"] * 9)  # > 77 tokens: two chunks


def _second_sampler(g, n, node_id, **changes):
    return g.node("P2PSampler", node_id, **{**n["p2p"].inputs, **changes})


def _maps(out, node_id="p2p"):
    return out[node_id][1].maps


def test_capturing_does_not_change_the_pictures_and_off_captures_nothing(host):
    g, n = p2p_graph()
    off = g.node("P2PAttentionCapture", "off", **{**CAPTURE, "enabled": False})
    _second_sampler(g, n, "p2p_off", capture=off)
    out = host.run(g.prompt(), keep=("p2p", "p2p_off"))
    assert torch.equal(samples(out, "p2p"), samples(out, "p2p_off"))
    assert _maps(out) is not None and _maps(out, "p2p_off") is None


@pytest.mark.parametrize("size, downsample", [(512, 4), (256, 2)], ids=["quarter", "at_least_16x16"])
def test_default_capture_is_the_papers_choice(host, pack, size, downsample):
    """1/4-resolution layers of the down and up blocks (512 px: a 64x64 latent, 16x16 maps), or finer where 1/4
    would give maps under 16x16 (256 px: 1/2), every step; each pixel's attention sums to 1 over the source's
    tokens (a known answer: softmax rows, averaged)."""
    g, n = p2p_graph(steps=5, width=size, height=size)
    out = host.run(g.prompt(), keep=("p2p", "loader"))
    maps = _maps(out)
    sites = pack.adapter.unet.attention_sites(out["loader"][0])
    expected_layers = {s.key for s in sites if s.downsample == downsample and s.key[0] in ("input", "output")}
    assert maps.spatial == (16, 16)
    assert maps.steps == tuple(range(5)) and maps.layer_count == len(expected_layers)
    torch.testing.assert_close(maps.cross[0].sum(-1), torch.ones(16, 16))
    assert maps.self_maps[0].shape == (256, 256)


@pytest.mark.parametrize("factors, latent_side, expected", [
    ((1, 2, 4, 8), 64, 4),  # SD1.5 at 512 px: the paper's 16x16
    ((2, 4), 128, 4),  # SDXL at 1024 px: 32x32
    ((1, 2, 4, 8), 32, 2),  # SD1.5 at 256 px: 16x16, not the 8x8 of 1/4
    ((1, 2, 4), 16, 1),  # demo model v3: its full 16x16 latent (8x8 maps did not find its objects)
    ((1, 2, 4), 8, 1),  # demo model v2: nothing finer than 8x8
    ((4,), 8, 4),  # nothing finer to take
])
def test_capture_and_blend_read_a_quarter_of_the_latent_but_not_under_16x16(pack, factors, latent_side, expected):
    unet = pack.adapter.unet
    sites = [unet.AttentionSite(("input", i, 0), factor) for i, factor in enumerate(factors)]
    assert unet.map_downsample(sites, latent_side) == expected


def test_capture_settings_choose_layers_and_steps(host):
    g, n = p2p_graph(steps=10)
    settings = g.node("P2PAttentionCapture", "settings", **{**CAPTURE, "resolution": "1/2", "start": 0.5,
                                                            "layers": "up", "per_step": True})
    n["p2p"].inputs["capture"] = settings
    maps = _maps(host.run(g.prompt(), keep=("p2p",)))
    assert maps.spatial == (8, 8) and maps.steps == (5, 6, 7, 8, 9)
    assert maps.per_step[0].shape == (5, 8, 8, maps.cross[0].shape[-1])
    torch.testing.assert_close(maps.per_step[0].mean(0), maps.cross[0])


def test_a_resolution_the_model_lacks_is_refused(host):
    g, n = p2p_graph()
    n["p2p"].inputs["capture"] = g.node("P2PAttentionCapture", "settings", **{**CAPTURE, "resolution": "1/8"})
    with pytest.raises(HostError, match=r"P2PSampler: input 'capture': .*1/8"):
        host.run(g.prompt(), keep=("p2p",))


def test_long_prompts_fold_their_repeated_contexts(host):
    """A two-chunk source beside a one-chunk edit: ComfyUI repeats the edit's context twice; its captured
    map covers its own 77 tokens and still sums to 1 per pixel."""
    g, n = p2p_graph(source=LONG, target="a blue circle", mode="refine", cross=0.0, self_replace=0.0)
    maps = _maps(host.run(g.prompt(), keep=("p2p",)))
    assert maps.cross[0].shape[-1] == 154 and maps.cross[1].shape[-1] == 77
    for item in (0, 1):
        torch.testing.assert_close(maps.cross[item].sum(-1), torch.ones(16, 16))


def _maps_graph(words="", item=1, decode=True, blend=False):
    g, n = p2p_graph()
    if blend:
        n["p2p"].inputs["edit"] = g.node("P2PLocalBlend", "blend", edit=n["edit"], source_words="circle",
                                         target_words="circle", threshold=0.3, start=0.2, subtract_words="")
    images = g.node("VAEDecode", "decode", samples=n["p2p"].out(0), vae=n["loader"].out(2))
    view = g.node("P2PAttentionMaps", "view", attention=n["p2p"].out(1),
                  images=images if decode else g.node("EmptyImage", "empty", width=128, height=128, batch_size=1,
                                                      color=0),
                  item=item, components=4, words=words)
    return g, view


def test_attention_maps_node_draws_grids_and_sends_the_view_its_data(host, pack):
    g, _ = _maps_graph(words="circle, blue")
    out = host.run(g.prompt())
    heatmaps, components = out["view"]
    # picture + 2 words in one row; picture + 4 components; tiles of 128 px scaled to >= 192 (x2) plus labels
    assert heatmaps.shape == (1, 256 + 18, 3 * 256 + 2 * 4, 3)
    assert components.shape == (1, 256 + 18, 5 * 256 + 4 * 4, 3)
    (executed,) = [e for e in host.server.of("executed") if e["node"] == "view"]
    data = executed["output"]["p2p_attention"][0]
    assert [i["label"] for i in data["items"]] == ["source", "edit 1"]
    assert data["items"][0]["words"] == ["circle"]  # "blue" is not in the source prompt
    assert data["items"][1]["words"] == ["circle", "blue"]
    heat = data["items"][1]["maps"][1]
    assert (heat["h"], heat["w"]) == (16, 16) and max(heat["values"]) == 1.0
    assert (host.base_dir / "temp" / data["items"][0]["image"]["filename"]).is_file()
    # the view's colour map comes with the maps: the anchors of the node's own image output, in 0..255
    anchors = np.array(data["colour_map"])
    assert anchors.shape[1] == 4 and anchors[0, 0] == 0.0 and anchors[-1, 0] == 1.0
    assert np.abs(pack.adapter.heatmap_render.colorize(anchors[None, :, 0]) * 255 - anchors[None, :, 1:]).max() <= 0.5


def test_a_blended_edit_shows_its_mask(host):
    g, _ = _maps_graph(words="circle", blend=True)
    heatmaps, _ = host.run(g.prompt())["view"]
    assert heatmaps.shape == (1, 256 + 18, 3 * 256 + 2 * 4, 3)  # picture, "circle", blend mask


def test_attention_maps_defaults_to_every_word(host):
    g, _ = _maps_graph(item=0)
    host.run(g.prompt())
    (executed,) = [e for e in host.server.of("executed") if e["node"] == "view"]
    assert executed["output"]["p2p_attention"][0]["items"][0]["words"] == [
        "a", "red", "circle", "on", "the", "left", "and", "small", "square"]


@pytest.mark.parametrize("kwargs, match", [
    ({"words": "circle, hat"}, r"P2PAttentionMaps: input 'words': \"hat\" is in none of the prompts"),
    ({"item": 2}, r"P2PAttentionMaps: input 'item': is 2, but there are only the source \(0\) and 1 edit"),
    ({"decode": False}, r"P2PAttentionMaps: input 'images': got 1 pictures but the sampler made 2"),
])
def test_attention_maps_bad_input_names_the_input(host, kwargs, match):
    g, _ = _maps_graph(**kwargs)
    with pytest.raises(HostError, match=match):
        host.run(g.prompt())
