"""ShapesBench's fast subset: the first scenes of each edit kind, run exactly as `bench/shapesbench.py` runs
them, on the trained demo model.

The thresholds sit below the full benchmark's figures (MODEL.md) with room for the spread of a few scenes;
a broken injection, word mapping or blend falls far below them, and the baseline (no attention control)
fails each P2P threshold, which the tests check too so that none of them can pass by default.
"""

import pytest

from bench import shapesbench

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bench(host):
    return shapesbench.Bench(host=host)


def test_color_swap_keeps_the_object_and_changes_its_color(bench):
    result = shapesbench.color_swap(bench, scenes=8)
    assert len(result.p2p["iou"]) >= 6, f"the model failed to draw {result.skipped} of 8 source objects"
    assert result.mean("p2p", "iou") >= 0.85
    assert result.mean("p2p", "target color") >= 0.75
    # the prompts leave position and size free, so without attention control the layout is redrawn
    assert result.mean("baseline", "iou") < result.mean("p2p", "iou") - 0.25


def test_local_blend_keeps_the_untouched_object(bench):
    result = shapesbench.local_blend(bench, scenes=4)
    assert result.p2p, "the model failed to draw the source objects"
    assert result.mean("p2p", "PSNR untouched object (dB)") >= 35.0
    assert result.mean("baseline", "PSNR untouched object (dB)") < 35.0
    assert result.mean("p2p", "target color") >= 0.5


def test_reweighting_big_grows_the_object(bench):
    result = shapesbench.reweight_size(bench, scenes=3)
    name = "Spearman rho (area vs weight)"
    assert result.p2p, "the model failed to draw the source objects"
    assert result.mean("p2p", name) >= 0.8
