"""Word/token indices and token mappings against the parity vectors of p2p_reference.md section 12,
computed with ComfyUI's real SD1 CLIP tokenizer.

Two documented departures from the public code:
* word lookup is case-insensitive (CLIP lower-cases text, so "A" and "a" are the same token);
* positions after the last swapped word, and all padding, are matched from the end token on instead of
  by absolute index (this fixes the public word-swap mapper's trailing-diagonal bug).
"""

import pytest
import torch

SQUIRREL = "A painting of a squirrel eating a burger"


def test_token_ids_of_the_reference_prompt(tokens_of):
    t = tokens_of(SQUIRREL)
    assert [p.token for p in t.pieces[:10]] == [49406, 320, 3086, 539, 320, 14004, 4371, 320, 6548, 49407]
    assert [p.role for p in t.pieces[:11]] == ["start"] + ["word"] * 8 + ["end", "pad"]
    assert t.length == 77


@pytest.mark.parametrize(
    "prompt, word, positions",
    [
        (SQUIRREL, "squirrel", (5,)),
        (SQUIRREL, "a", (1, 4, 7)),  # public code: (4, 7), because it compares "A" != "a" as text
        ("pea soup with croutons", "croutons", (4, 5, 6)),
        ("fried potatos", "potatos", (2, 3)),
        ("a red car, on a road", "car", (3,)),  # punctuation is its own word
        ("a big muscle car on a road", "muscle car", (3, 4)),
    ],
)
def test_word_positions(tokens_of, split_words, prompt, word, positions):
    assert tokens_of(prompt).find(split_words(word)) == positions


def test_unknown_word_names_the_prompt_words(tokens_of, split_words, pack):
    with pytest.raises(pack.p2p.P2PError, match=r'"lion" is not a word of the prompt.*squirrel'):
        tokens_of(SQUIRREL).find(split_words("lion"))


def test_replace_same_token_counts_is_identity_plus_swap(tokens_of, pack):
    m = pack.p2p.replace_mapping(tokens_of(SQUIRREL), tokens_of(SQUIRREL.replace("squirrel", "lion")))
    assert torch.equal(m.weights, torch.eye(77))
    assert not m.own.any()


def test_replace_longer_word_spreads_and_keeps_the_tail_aligned(tokens_of, pack):
    # "...burger" -> "...lasagne" ("lasag", "ne")
    m = pack.p2p.replace_mapping(tokens_of(SQUIRREL), tokens_of(SQUIRREL.replace("burger", "lasagne")))
    assert m.weights[8, 8] == 0.5 and m.weights[8, 9] == 0.5
    assert m.source_of(10) == [9]  # target end token <- source end token (the public code leaves it unmapped)
    assert m.source_of(11) == [10] and m.source_of(76) == [75]
    assert all(m.source_of(t) == [t] for t in range(8))


def test_replace_three_token_word_then_tail(tokens_of, pack):
    # "a cat eating a burger" -> "a croutons eating a burger"
    m = pack.p2p.replace_mapping(tokens_of("a cat eating a burger"), tokens_of("a croutons eating a burger"))
    assert torch.allclose(m.weights[2, 2:5], torch.full((3,), 1 / 3))
    assert [m.source_of(t) for t in (5, 6, 7, 8)] == [[3], [4], [5], [6]]  # eating, a, burger, end
    assert m.weights.sum(0)[:9].tolist() == pytest.approx([1, 1, 1 / 3, 1 / 3, 1 / 3, 1, 1, 1, 1])


def refine_vector(mapping, length):
    """The public code's `mapper` (target -> source, -1 for a new token) over the first positions."""
    out = []
    for t in range(length):
        src = mapping.source_of(t)
        out.append(-1 if mapping.own[t] else src[0])
    return out


@pytest.mark.parametrize(
    "source, target, expected",
    [
        # p2p_reference.md section 3.2, up to and including the target's end token
        (SQUIRREL, SQUIRREL.replace("A painting", "A neoclassical painting"), [0, 1, -1, -1, 2, 3, 4, 5, 6, 7, 8, 9]),
        ("soup", "pea soup with croutons", [0, -1, 1, -1, -1, -1, -1, 2]),
        ("a photo of a house on a mountain", "a photo of a house on a mountain at fall",
         [0, 1, 2, 3, 4, 5, 6, 7, 8, -1, -1, 9]),
        ("cat dog", "dog cat", [0, 2, -1, 3]),
        ("a red car on a road", "a car on a road", [0, 1, 3, 4, 5, 6, 7]),
    ],
)
def test_refine_mapper_parity(tokens_of, pack, source, target, expected):
    m = pack.p2p.refine_mapping(tokens_of(source), tokens_of(target))
    assert refine_vector(m, len(expected)) == expected
    alphas = [0 if m.own[t] else 1 for t in range(len(expected))]
    assert alphas == [0 if e == -1 else 1 for e in expected]


def test_long_prompts_map_chunk_by_chunk(tokens_of, pack):
    words = " ".join(f"word{i}" for i in range(40))  # two tokens each: more than one chunk
    source, target = tokens_of(f"a cat and {words}"), tokens_of(f"a dog and {words}")
    assert source.num_chunks == target.num_chunks == 2
    m = pack.p2p.replace_mapping(source, target)
    assert torch.equal(m.weights, torch.eye(source.length))
    start2, tail2 = target.chunk_specials(1)
    assert start2 == 77 and m.source_of(start2) == [77]
    longer = tokens_of(f"a cat and {words} with a few more words at the end")
    refine = pack.p2p.refine_mapping(source, longer)
    assert refine.own.sum() == 8  # the eight added words are new; every other token maps to its source
