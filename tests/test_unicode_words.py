"""Words with letters outside ASCII: CLIP's byte-level BPE spells them with stand-in symbols ("café" is the
token "cafÃ©") and may split one character over several tokens ("猫" is three). Words are compared, and shown,
as the text they decode to."""

import unicodedata

import pytest
import torch

from p2p_graphs import p2p_graph, samples
from tools.host import HostError

WORDS = ["café", "naïve", "γάτα", "猫", "🐱", "cat"]  # "cat": the ASCII control case
CLIP_WORDS = ["the", "small", "in", "a", "garden"]  # the prompt's other words, as CLIP spells them


def prompt_with(word):
    return f"the small {word} in a garden"


def word_positions(tokens, before: int, after: int):
    """The positions between the `before`-th and the `after`-th word (0-based) of a prompt."""
    return tuple(range(tokens.words[before].positions[-1] + 1, tokens.words[after].positions[0]))


@pytest.mark.parametrize("word", WORDS)
def test_prompt_words_decode_to_their_text(tokens_of, split_words, word):
    tokens = tokens_of(prompt_with(word))
    assert [w.text for w in tokens.words] == CLIP_WORDS[:2] + [word] + CLIP_WORDS[2:]
    assert tokens.find(split_words(word)) == word_positions(tokens, 1, 3)
    assert split_words(f"small {word} in") == ("small", word, "in")


@pytest.mark.parametrize("word", WORDS)
@pytest.mark.parametrize("typed", [str.upper, str.title, lambda w: unicodedata.normalize("NFD", w)],
                         ids=["upper", "title", "decomposed"])
def test_lookup_follows_clips_case_and_normalization(tokens_of, split_words, word, typed):
    """CLIP lower-cases and composes (NFC) what it reads, with no other folding (accents are kept): a word typed
    in another case or in decomposed form names the prompt's word, in either direction."""
    plain, other = tokens_of(prompt_with(word)), tokens_of(prompt_with(typed(word)))
    assert other.words[2].text == word
    assert plain.find(split_words(typed(word))) == word_positions(plain, 1, 3)
    assert other.find(split_words(word)) == word_positions(other, 1, 3)


def test_an_accent_is_part_of_the_word(tokens_of, split_words, pack):
    with pytest.raises(pack.p2p.P2PError, match='"cafe" is not a word'):
        tokens_of(prompt_with("café")).find(split_words("cafe"))


def test_a_character_split_across_chunks_stays_whole(tokens_of, split_words):
    """ComfyUI breaks a word of 8 tokens or more at the chunk's end, here inside the first "猫" (3 tokens)."""
    long_word = "猫" * 4
    tokens = tokens_of("a " * 74 + long_word)
    last = tokens.words[-1]
    assert last.text == long_word and last.positions[0] < tokens.chunk_length < last.positions[-1]
    assert tokens.find(split_words(long_word)) == last.positions


def utf8_lead_and_continuation_bytes():
    """Characters whose UTF-8 spellings hold every byte valid UTF-8 can contain: all 2-byte characters (leads
    C2-DF, continuations 80-BF), one per 3-byte lead (E0-EF) and one per 4-byte lead (F0-F4)."""
    two = range(0xA1, 0x800)
    three = (0x1000 * k + 0x100 for k in range(16))
    four = (max(0x40000 * k, 0x10000) + 0x100 for k in range(5))
    return [chr(c) for c in (*two, *three, *four)]


def test_words_decode_as_the_host_tokenizer_decodes_them(sd1_clip, split_words):
    hf = sd1_clip.tokenizer.clip_l.tokenizer
    for char in utf8_lead_and_continuation_bytes():
        ids = hf(char)["input_ids"][1:-1]
        assert " ".join(split_words(char)) == hf.decode(ids).strip(), f"U+{ord(char):04X}"


# -- through ComfyUI's executor (small and short runs: what is checked is which words are found) -----------

GRAPH_WORDS = ["café", "猫"]  # a word of one token; a character split over three tokens


def graph_with(word, **kwargs):
    return p2p_graph(f"a red circle and the {word}", f"a blue circle and the {word}", steps=2, width=64, height=64,
                     **kwargs)


@pytest.mark.parametrize("word", GRAPH_WORDS)
def test_reweighting_a_word_changes_the_edit(host, word):
    g, n = graph_with(word, cross=1.0)
    n["p2p"].inputs["edit"] = g.node("P2PReweight", "plain", edit=n["edit"], weights=f"{word}: 1")
    stronger = g.node("P2PReweight", "stronger", edit=n["edit"], weights=f"{word.upper()}: 2")
    g.node("P2PSampler", "p2p_stronger", **{**n["p2p"].inputs, "edit": stronger})
    out = host.run(g.prompt(), keep=("p2p", "p2p_stronger"))
    plain, reweighted = samples(out, "p2p"), samples(out, "p2p_stronger")
    assert torch.equal(reweighted[0], plain[0])
    assert not torch.equal(reweighted[1], plain[1])  # runs are deterministic: any change is the weight's


@pytest.mark.parametrize("word", GRAPH_WORDS)
def test_schedule_blend_and_heatmaps_name_the_word(host, word):
    g, n = graph_with(word, word_schedule=f"{word}: 0.5")
    n["p2p"].inputs["edit"] = g.node("P2PLocalBlend", "blend", edit=n["edit"], source_words=word,
                                     target_words=f"blue, {word}", threshold=0.3, start=0.2, subtract_words="")
    images = g.node("VAEDecode", "decode", samples=n["p2p"].out(0), vae=n["loader"].out(2))
    for view, words in (("every_word", ""), ("named", f"circle, {word}")):
        g.node("P2PAttentionMaps", view, attention=n["p2p"].out(1), images=images, item=1, components=1,
               words=words)
    host.run(g.prompt())
    shown = {e["node"]: [item["words"] for item in e["output"]["p2p_attention"][0]["items"]]
             for e in host.server.of("executed")}
    assert shown["every_word"] == [["a", colour, "circle", "and", "the", word] for colour in ("red", "blue")]
    assert shown["named"] == [["circle", word]] * 2


@pytest.mark.parametrize("word", WORDS)
def test_a_missing_word_lists_the_prompts_words_as_text(host, word):
    g, n = graph_with(word)
    n["p2p"].inputs["edit"] = g.node("P2PReweight", "rw", edit=n["edit"], weights="dog: 2")
    with pytest.raises(HostError) as info:
        host.run(g.prompt(), keep=("p2p",))
    message = str(info.value)
    assert "P2PReweight: input 'weights'" in message and '"dog" is not a word' in message
    assert f"circle, and, the, {word})" in message
