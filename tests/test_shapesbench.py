"""ShapesBench's fast subset: the first scenes of some edit kinds, run exactly as `bench/shapesbench.py` runs
them, on the trained demo model.

What is checked is what attention control is for, compared with the fixed-seed baseline on the same
scenes: re-weighting "big" grows the object monotonically (ComfyUI's own "(big:w)" does not), re-weighting
the colour word is a monotone fader (issue #3's rho of 0.9), recolouring one of two objects leaves the
other where it was more often than the baseline does, and a shape swap should keep the object's centre
where the baseline moves it. The current weights miss the latter and the colour-swap and local-blend
targets of issue #3 (MODEL.md): the layout test is a strict xfail, the others are not asserted yet.
"""

import pytest

from bench import shapesbench

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bench(host):
    return shapesbench.Bench(host=host)


@pytest.mark.xfail(strict=True, reason="issue #3: on the grounded weights a shape swap moves the object 2.5 px with "
                   "P2P and 2.7 px with the fixed-seed baseline (50 scenes, MODEL.md): the baseline hardly moves it, "
                   "so there is little for P2P to keep; strict, so it flags when a recipe or default makes it pass")
def test_shape_swap_keeps_the_objects_place(bench):
    result = shapesbench.shape_swap(bench, scenes=8)
    assert len(result.p2p["centre shift (px)"]) >= 3, f"the model drew only {8 - result.skipped} of 8 sources"
    assert result.mean("p2p", "centre shift (px)") < 2.0
    assert result.mean("baseline", "centre shift (px)") > 2 * result.mean("p2p", "centre shift (px)") + 2.0


def test_reweighting_big_grows_the_object(bench):
    result = shapesbench.reweight_size(bench, scenes=4)
    name = "Spearman rho (area vs weight)"
    assert result.p2p, "the model failed to draw the source objects"
    assert result.mean("p2p", name) >= 0.5
    assert result.mean("p2p", name) > result.mean("baseline", name) + 0.5


def test_reweighting_the_colour_word_is_a_monotone_fader(bench):
    """Issue #3's reweight target (Spearman rho at least 0.9), on the first scenes of the benchmark."""
    result = shapesbench.reweight_color(bench, scenes=6)
    name = "Spearman rho (area vs weight)"
    assert len(result.p2p.get(name, [])) >= 5, f"the model drew only {6 - result.skipped} of 6 sources"
    p2p, baseline = result.mean("p2p", name), result.mean("baseline", name)
    print(f"rho: P2P {p2p:.3f}, ComfyUI's weighting {baseline:.3f}")
    assert p2p >= 0.9
    assert p2p > baseline


def test_recolouring_one_object_keeps_the_other(bench):
    result = shapesbench.color_swap_two_objects(bench, scenes=10)
    name = "other object IoU"
    drawn = len(result.p2p.get(name, []))
    assert drawn >= 6, f"the model drew both objects in only {drawn} of 10 sources"
    assert result.mean("p2p", name) >= 0.5
    assert result.mean("p2p", name) > result.mean("baseline", name) + 0.1
