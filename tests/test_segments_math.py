"""The engine's self-attention segments (k-means on the captured self-attention rows, labelled by the words'
cross-attention) and local blend's given region, on planted maps whose answer is known."""

import pytest
import torch
from test_engine_math import fake_prompt

from p2p import AttentionMaps, LocalBlend, P2PError
from p2p.local_blend import BlendMaps, blend_mask, region_mask
from p2p.segments import kmeans, segment, word_masks

H = W = 6


def planted(blocks: torch.Tensor, words: list[str], word_blocks: dict[str, int]) -> AttentionMaps:
    """Maps of one item whose cells attend within their block (blocks [h, w] of block ids) and whose word
    `w` attends to block word_blocks[w]."""
    flat = blocks.flatten()
    self_map = (flat[:, None] == flat[None, :]).float()
    self_map = self_map / self_map.sum(1, keepdim=True)  # [N, N], rows sum to 1
    prompt = fake_prompt(words, chunk=len(words) + 2)
    cross = torch.full((H, W, prompt.length), 0.01)
    for w, block in word_blocks.items():
        cross[..., prompt.find([w])[0]] += (blocks == block).float()
    return AttentionMaps(prompts=(prompt,), spatial=(H, W), cross=(cross,), self_maps=(self_map,), per_step=None,
                         steps=(0,), layer_count=1)


def three_blocks() -> torch.Tensor:
    blocks = torch.zeros(H, W, dtype=torch.int64)
    blocks[:3, :3] = 1
    blocks[3:, 2:] = 2
    return blocks


def test_kmeans_finds_planted_clusters_and_numbers_them_by_first_row():
    gen = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    truth = torch.tensor([2, 0, 1] * 20)
    x = centres[truth] + 0.1 * torch.randn(60, 2, generator=gen)
    labels = kmeans(x, 3, seed=5)
    assert labels[:3].tolist() == [0, 1, 2]  # first-seen order
    assert all(len(set(labels[truth == t].tolist())) == 1 for t in range(3))
    assert torch.equal(kmeans(x, 3, seed=5), labels)  # deterministic


def test_kmeans_refuses_more_clusters_than_rows():
    with pytest.raises(P2PError, match="cannot make 5 segments of 4 cells"):
        kmeans(torch.randn(4, 2), 5)


def test_segments_follow_self_attention_and_take_the_words_that_fall_on_them():
    blocks = three_blocks()
    maps = planted(blocks, ["a", "circle", "square"], {"circle": 1, "square": 2})
    seg = segment(maps, 0, k=3)
    for block, word in ((0, ""), (1, "circle"), (2, "square")):
        cells = seg.labels[blocks == block]
        assert len(set(cells.tolist())) == 1, f"block {block} should be one segment"
        assert seg.names[int(cells[0])] == word
    assert seg.words == ("a", "circle", "square")
    assert torch.equal(seg.word_mask("circle"), blocks == 1)


def test_word_masks_take_the_latents_size():
    seg = segment(planted(three_blocks(), ["circle", "square"], {"circle": 1, "square": 2}), 0, k=3)
    masks = word_masks(seg, (12, 18))
    assert masks.shape == (2, 12, 18)
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    assert masks[0].sum() == (three_blocks() == 1).sum() * 2 * 3


@pytest.mark.parametrize(("change", "message"), [
    ({"self_maps": None}, "no self-attention maps"),
    ({"item": 1}, "is 1, but the run has 1 items"),
    ({"k": 37}, "more than the 6x6 = 36 cells"),
])
def test_segments_refuse_what_they_cannot_do(change, message):
    maps = planted(three_blocks(), ["circle"], {"circle": 1})
    if "self_maps" in change:
        maps = AttentionMaps(prompts=maps.prompts, spatial=maps.spatial, cross=maps.cross, self_maps=None,
                             per_step=None, steps=(0,), layer_count=1)
    with pytest.raises(P2PError, match=message):
        segment(maps, change.get("item", 0), k=change.get("k", 3))


def test_a_region_is_the_blend_mask_from_the_start_and_joins_the_words():
    region = torch.zeros(64, 64)
    region[:32, :16] = 1.0  # a pixel-size mask: the top-left quarter-column of an 8x8 latent
    before_any_map = BlendMaps(LocalBlend((), (), region=region)).mask((8, 8))
    assert before_any_map is not None and torch.equal(before_any_map, region_mask(region, (8, 8)))
    assert int(region_mask(region, (8, 8)).sum()) == 4 * 2
    sums = {"target": torch.zeros(4, 4)}
    sums["target"][3, 3] = 1.0
    both = blend_mask(sums, 0.3, (8, 8), region)[0, 0]
    assert both[:4, :2].all() and both[6:, 6:].all() and not both[0, 7]


def test_a_small_region_is_repeated_to_the_latent():
    region = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    mask = region_mask(region, (4, 4))[0, 0]
    assert mask[:2, :2].all() and int(mask.sum()) == 4


@pytest.mark.parametrize(("region", "message"), [
    (torch.zeros(2, 3, 3), "one \\[height, width\\] map"),
    (torch.tensor([[float("nan")]]), "NaN"),
])
def test_bad_regions_are_refused(region, message):
    with pytest.raises(P2PError, match=message):
        LocalBlend((), (), region=region)


def test_an_empty_region_without_words_says_it_cannot_change_anything():
    assert [f for f, _ in LocalBlend((), (), region=torch.zeros(4, 4)).no_effect()] == ["mask"]
    assert LocalBlend((), (), region=torch.ones(4, 4)).no_effect() == []
    with pytest.raises(P2PError, match="or a mask"):
        LocalBlend((), ())


def test_threshold_one_is_not_reported_when_a_region_is_the_mask():
    """The threshold applies to word maps only: with a given region the blend still edits inside it."""
    assert LocalBlend((), (), threshold=1.0, region=torch.ones(4, 4)).no_effect() == []
    assert [f for f, _ in LocalBlend((1,), (), threshold=1.0).no_effect()] == ["threshold"]
