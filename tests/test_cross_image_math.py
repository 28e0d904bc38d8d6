"""Cross-image attention's engine (`p2p.cross_image`): the contrasted attention, AdaIN of a latent, the spec."""

import math

import pytest
import torch

from p2p import P2PError
from p2p.cross_image import AppearanceSpec, contrasted_attention, latent_adain, swap_guided

HEADS = 2


def _qkv(seed=0, s=2, n=12, m=10, c=8):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(s, n, c, generator=g), torch.randn(s, m, c, generator=g), torch.randn(s, m, c, generator=g))


def _heads(x):
    s, n, c = x.shape
    return x.reshape(s, n, HEADS, c // HEADS).transpose(1, 2)


def test_contrast_one_is_plain_attention():
    q, k, v = _qkv()
    out = contrasted_attention(q, k, v, HEADS, 1.0)
    expected = torch.nn.functional.scaled_dot_product_attention(_heads(q), _heads(k), _heads(v))
    torch.testing.assert_close(out, expected.transpose(1, 2).reshape(q.shape))


def test_contrast_stretches_around_the_row_mean_and_clips():
    """A known answer from the definition: clip((p - 1/M) c + 1/M, 0, 1) @ v, per head."""
    q, k, v = _qkv(1)
    contrast = 1.67
    p = (_heads(q) @ _heads(k).transpose(-1, -2) / math.sqrt(q.shape[-1] // HEADS)).softmax(-1)
    m = k.shape[1]
    expected = (((p - 1 / m) * contrast + 1 / m).clamp(0, 1) @ _heads(v)).transpose(1, 2).reshape(q.shape)
    out = contrasted_attention(q, k, v, HEADS, contrast)
    torch.testing.assert_close(out, expected)
    assert not torch.allclose(out, contrasted_attention(q, k, v, HEADS, 1.0))


@pytest.mark.parametrize("max_scores", [1, 40, 10**9])
def test_query_chunks_do_not_change_the_result(max_scores):
    q, k, v = _qkv(2)
    torch.testing.assert_close(contrasted_attention(q, k, v, HEADS, 1.67, max_scores=max_scores),
                               contrasted_attention(q, k, v, HEADS, 1.67))


def test_latent_adain_takes_the_references_channel_statistics():
    g = torch.Generator().manual_seed(3)
    x, ref = torch.randn(4, 8, 8, generator=g), torch.randn(4, 6, 6, generator=g) * 3 + 2
    out = latent_adain(x, ref)
    torch.testing.assert_close(out.flatten(1).mean(1), ref.flatten(1).mean(1), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.flatten(1).std(1), ref.flatten(1).std(1), atol=1e-4, rtol=1e-4)
    # the pattern is kept: AdaIN is an affine map per channel
    assert torch.corrcoef(torch.stack([out[0].flatten(), x[0].flatten()]))[0, 1] > 0.9999


def test_masked_adain_sets_the_objects_statistics_and_leaves_the_rest():
    """The paper's masked AdaIN: the statistics of x's cells become those of ref's cells, x is unchanged elsewhere,
    and masks covering everything are plain AdaIN."""
    g = torch.Generator().manual_seed(4)
    x, ref = torch.randn(4, 8, 8, generator=g), torch.randn(4, 6, 6, generator=g)
    ref_cells = torch.zeros(6, 6, dtype=torch.bool)
    ref_cells[1:4, 2:6] = True
    ref[:, ref_cells] = ref[:, ref_cells] * 0.5 + 3  # the reference's object: another colour than its background
    cells = torch.rand(8, 8, generator=g) < 0.4
    out = latent_adain(x, ref, cells, ref_cells)
    torch.testing.assert_close(out[:, cells].mean(1), ref[:, ref_cells].mean(1), atol=1e-5, rtol=0)
    torch.testing.assert_close(out[:, cells].std(1), ref[:, ref_cells].std(1), atol=1e-4, rtol=1e-4)
    assert torch.equal(out[:, ~cells], x[:, ~cells])
    everywhere = torch.ones(8, 8, dtype=torch.bool), torch.ones(6, 6, dtype=torch.bool)
    assert torch.equal(latent_adain(x, ref, *everywhere), latent_adain(x, ref))


def test_the_windows_are_the_papers_per_layer_size():
    spec = AppearanceSpec()
    full, half = spec.window(1), spec.window(2)
    assert full is not None and half is not None
    assert (full.first_step(100), full.stop_step(100)) == (10, 90)
    assert (half.first_step(100), half.stop_step(100)) == (10, 70)
    assert spec.window(4) is None


def test_swap_guidance_falls_as_the_papers_code_has_it_within_the_swap_steps():
    """The paper's code: strengths np.linspace(g, max(g / 2, 1), steps)[i] in its cross-image steps 10-90 of 100,
    1 (the swapped prediction alone) outside them."""
    spec, steps = AppearanceSpec(), 100
    linspace = torch.linspace(3.5, 1.75, steps, dtype=torch.float64)
    strengths = [spec.swap_strength(i, steps) for i in range(steps)]
    assert strengths[:10] == [1.0] * 10 and strengths[90:] == [1.0] * 10
    torch.testing.assert_close(torch.tensor(strengths[10:90], dtype=torch.float64), linspace[10:90])
    # the window is the union of the two layer sizes' windows
    assert AppearanceSpec(end=0.5, end_half=0.8).swap_strength(75, steps) > 1.0
    assert all(AppearanceSpec(swap_guidance=1.0).swap_strength(i, steps) == 1.0 for i in range(steps))
    assert AppearanceSpec(swap_guidance=1.5).swap_strength(89, steps) == pytest.approx(1.5 - 0.5 * 89 / 99)


def test_swap_guided_extrapolates_from_the_prediction_without_the_swap():
    g = torch.Generator().manual_seed(4)
    no_swap, swap = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    assert torch.equal(swap_guided(no_swap, swap, 0.0), no_swap)
    torch.testing.assert_close(swap_guided(no_swap, swap, 1.0), swap)
    torch.testing.assert_close(swap_guided(no_swap, swap, 3.5) - no_swap, 3.5 * (swap - no_swap))


@pytest.mark.parametrize("changes, field", [
    ({"swap_guidance": 0.5}, "swap_guidance"), ({"swap_guidance": math.inf}, "swap_guidance"),
    ({"start": -0.1}, "start"), ({"end": math.nan}, "end"), ({"start": 0.5, "end": 0.4}, "end"),
    ({"start": 0.8}, "end_half"), ({"contrast": 0.5}, "contrast"), ({"adain_start": 2.0}, "adain_start"),
])
def test_bad_settings_name_their_field(changes, field):
    with pytest.raises(P2PError, match=rf"^{field}: "):
        AppearanceSpec(**changes)
