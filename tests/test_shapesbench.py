"""ShapesBench's fast subset: the first scenes of each edit kind, run exactly as `bench/shapesbench.py` runs
them, on the committed demo model (v2), against the fixed-seed baseline on the same scenes.

The thresholds sit below what these scenes measure (in brackets), and hold issue #21's targets where the
first scenes meet them: the model draws the named shape and a shape swap takes the target shape in place;
a colour swap takes the new colour where the object was, far more than the baseline; re-weighting the
colour word is a fader and "big" grows the object where ComfyUI's "(big:w)" does not; recolouring one of two
objects leaves the other where it was; local blend keeps the untouched object closer than the same edit
without it. The 50-scene figures are in MODEL.md.
"""

import pytest

from bench import shapesbench

pytestmark = pytest.mark.slow

RHO = "Spearman rho (area vs weight)"


@pytest.fixture(scope="module")
def bench(host):
    return shapesbench.Bench(host=host)


def test_shape_swap_draws_the_new_shape_where_the_object_was(bench):
    result = shapesbench.shape_swap(bench, scenes=8)
    assert len(result.p2p["target shape"]) >= 6, f"the model drew only {8 - result.skipped} of 8 sources"
    assert result.mean("p2p", "source shape") >= 0.8  # (100%)
    assert result.mean("p2p", "target shape") >= 0.8  # (100%)
    assert result.mean("p2p", "centre shift (px)") < result.mean("baseline", "centre shift (px)")  # (3.0, 4.3)
    assert result.mean("p2p", "size change") + 0.3 < result.mean("baseline", "size change")  # (0.38, 1.06)


def test_colour_swap_recolours_the_object_in_place(bench):
    result = shapesbench.color_swap(bench, scenes=10)
    assert len(result.p2p["iou"]) >= 8, f"the model drew only {10 - result.skipped} of 10 sources"
    assert result.mean("p2p", "target color") >= 0.9  # (100%; baseline 80%)
    assert result.mean("p2p", "iou") >= 0.65  # (0.75)
    assert result.mean("baseline", "iou") <= result.mean("p2p", "iou") - 0.15  # (0.54)


def test_reweighting_big_grows_the_object(bench):
    result = shapesbench.reweight_size(bench, scenes=4)
    assert result.p2p, "the model failed to draw the source objects"
    assert result.mean("p2p", RHO) >= 0.2  # (0.43)
    assert result.mean("p2p", RHO) > result.mean("baseline", RHO) + 0.5  # (-0.67)


def test_reweighting_the_colour_word_is_a_monotone_fader(bench):
    """Issue #21's rho of 0.9 holds over 50 scenes (0.929); the first 12 give 0.87, ComfyUI's weighting 0.57."""
    result = shapesbench.reweight_color(bench, scenes=12)
    assert len(result.p2p.get(RHO, [])) >= 10, f"the model drew only {12 - result.skipped} of 12 sources"
    p2p, baseline = result.mean("p2p", RHO), result.mean("baseline", RHO)
    print(f"rho: P2P {p2p:.3f}, ComfyUI's weighting {baseline:.3f}")
    assert p2p >= 0.8
    assert p2p > baseline + 0.2


def test_recolouring_one_object_keeps_the_other(bench):
    result = shapesbench.color_swap_two_objects(bench, scenes=20)
    name = "other object IoU"
    drawn = len(result.p2p.get(name, []))
    assert drawn >= 14, f"the model drew both objects in only {drawn} of 20 sources"
    assert result.mean("p2p", name) >= 0.5  # (0.55)
    assert result.mean("p2p", name) > result.mean("baseline", name) + 0.1  # (0.41)


def test_local_blend_keeps_the_untouched_object(bench):
    """Local blend reads 8x8 maps on the demo's 8x8 latent (1/4 of it, 2x2, cannot tell two objects apart: the
    mask then covered the whole picture and the blend changed nothing)."""
    result = shapesbench.local_blend(bench, scenes=6)
    assert len(result.p2p["PSNR untouched object (dB)"]) >= 5, "the model drew too few of the sources"
    blended = result.mean("p2p", "PSNR untouched object (dB)")  # (25.1)
    assert blended > result.mean("p2p", "PSNR untouched, no blend (dB)") + 0.5  # (23.8)
    assert blended > result.mean("baseline", "PSNR untouched object (dB)") + 1.0  # (22.0)
    assert result.mean("p2p", "target color") >= 0.8  # (100%)


def test_local_blend_keeps_the_untouched_object_on_demo_model_v3(host):
    """On v3's 16x16 latent local blend reads 16x16 maps (MIN_BLEND_MAP_SIDE): issue #21's 35 dB for the
    untouched object holds (8 scenes: 43.7 dB; from 8x8 maps the mask covered it: 26.1, no better than no
    blend at all, 26.2)."""
    from shapes_demo.model import V3_WEIGHTS

    result = shapesbench.local_blend(shapesbench.Bench(host=host, weights=V3_WEIGHTS), scenes=4)
    assert len(result.p2p["PSNR untouched object (dB)"]) >= 3, "the model drew too few of the sources"
    blended = result.mean("p2p", "PSNR untouched object (dB)")
    unblended = result.mean("p2p", "PSNR untouched, no blend (dB)")
    print(f"untouched object: {blended:.1f} dB blended, {unblended:.1f} without")
    assert blended >= 35.0
    assert result.mean("p2p", "target color") >= 0.75
