"""ShapesBench's fast subset: the first scenes of each edit kind, run exactly as `bench/shapesbench.py` runs
them, on the committed demo model (v3), against the fixed-seed baseline on the same scenes.

The thresholds sit below what these scenes measure (in brackets), and hold issue #21's targets where the
first scenes meet them: the model draws the named shape and a shape swap takes the target shape in place;
a colour swap takes the new colour where the object was, far more than the baseline; re-weighting the
colour word is a fader and "big" grows the object where ComfyUI's "(big:w)" does not; recolouring one of two
objects leaves the other where it was; local blend keeps the untouched object at 35 dB, far closer than the
same edit without it; colour swaps of inverted rendered scenes keep the picture. The 50-scene figures are in
MODEL.md.
"""

import numpy as np
import pytest

from bench import inversion, shapesbench

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
    assert result.mean("p2p", "centre shift (px)") + 2 < result.mean("baseline", "centre shift (px)")  # (0.8, 5.3)
    assert result.mean("p2p", "size change") + 0.15 < result.mean("baseline", "size change")  # (0.25, 0.53)


def test_colour_swap_recolours_the_object_in_place(bench):
    result = shapesbench.color_swap(bench, scenes=10)
    assert len(result.p2p["iou"]) >= 8, f"the model drew only {10 - result.skipped} of 10 sources"
    assert result.mean("p2p", "target color") >= 0.8  # (90%; baseline 70%)
    assert result.mean("p2p", "iou") >= 0.72  # (0.805)
    assert result.mean("baseline", "iou") <= result.mean("p2p", "iou") - 0.2  # (0.548)
    for side in ("p2p", "baseline"):  # the IoU by the source object's size splits the same cases
        scores = getattr(result, side)
        small, large = (scores.get(f"iou, source {split} {shapesbench.SMALL_OBJECT} px", [])
                        for split in ("under", "of at least"))
        assert sorted(small + large) == sorted(scores["iou"])


def test_reweighting_big_grows_the_object(bench):
    result = shapesbench.reweight_size(bench, scenes=4)
    assert result.p2p, "the model failed to draw the source objects"
    assert result.mean("p2p", RHO) >= 0.8  # (0.974; 0.788 over 50 scenes)
    assert result.mean("p2p", RHO) > result.mean("baseline", RHO) + 1.0  # (-0.457)


def test_reweighting_the_colour_word_is_a_monotone_fader(bench):
    """Issue #21's rho of 0.9 holds over 50 scenes (0.908); the first 12 give 0.931, ComfyUI's weighting 0.699."""
    result = shapesbench.reweight_color(bench, scenes=12)
    assert len(result.p2p.get(RHO, [])) >= 10, f"the model drew only {12 - result.skipped} of 12 sources"
    p2p, baseline = result.mean("p2p", RHO), result.mean("baseline", RHO)
    print(f"rho: P2P {p2p:.3f}, ComfyUI's weighting {baseline:.3f}")
    assert p2p >= 0.85
    assert p2p > baseline + 0.15


def test_recolouring_one_object_keeps_the_other(bench):
    result = shapesbench.color_swap_two_objects(bench, scenes=20)
    name = "other object IoU"
    drawn = len(result.p2p.get(name, []))
    assert drawn >= 14, f"the model drew both objects in only {drawn} of 20 sources"
    assert result.mean("p2p", name) >= 0.5  # (0.581)
    assert result.mean("p2p", name) > result.mean("baseline", name) + 0.15  # (0.32)


def test_local_blend_keeps_the_untouched_object(bench):
    """Issue #21's 35 dB for the untouched object: local blend reads the demo's 16x16 maps (MIN_MAP_SIDE;
    from 8x8 maps the mask covered the other object and kept it no better than no blend at all)."""
    result = shapesbench.local_blend(bench, scenes=6)
    assert len(result.p2p["PSNR untouched object (dB)"]) >= 5, "the model drew too few of the sources"
    blended = result.mean("p2p", "PSNR untouched object (dB)")  # (46.6)
    assert blended >= 35.0
    assert blended > result.mean("p2p", "PSNR untouched, no blend (dB)") + 10  # (25.9)
    assert blended > result.mean("baseline", "PSNR untouched object (dB)") + 10  # (22.6)
    assert result.mean("p2p", "target color") >= 0.8  # (100%)


def test_colour_swaps_of_inverted_scenes_keep_the_picture(bench):
    """Issue #5's targets on rendered scenes the model never generated, inverted with P2P Invert's default
    (direct): the swap takes the colour in the object's outline (IoU >= 0.85 over 20 scenes: 0.872) and keeps
    what lies outside it (>= 30 dB: 33.6), the source regenerating the picture (41.3 dB). The first 4 scenes:
    (in brackets)."""
    stats = inversion.measure(bench.pack, bench.model, bench.clip, bench.vae, bench.negative, "direct", count=4)
    mean = {name: float(np.mean(values)) for name, values in stats.items()}
    print(mean)
    assert mean["took"] == 1.0  # (100%)
    assert mean["iou"] >= 0.8  # (0.893)
    assert mean["outside"] >= 30.0  # (35.1)
    assert mean["psnr"] >= 38.0  # (42.4)
