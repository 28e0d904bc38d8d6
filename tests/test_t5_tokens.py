"""T5's sentencepiece tokens read as the engine's PromptTokens (Flux and Chroma, whose text conditioning is T5's
tokens), with ComfyUI's real T5 tokenizer: words split as CLIP splits them, positions that index the conditioning,
and word-swap mappings that match words without a start token."""

import pytest

from tools.random_models import build_clip

PROMPT = "A red circle, don't move: a café on the left."
WORDS = ["a", "red", "circle", ",", "don", "'", "t", "move", ":", "a", "café", "on", "the", "left", "."]


@pytest.fixture(scope="module", params=["flux", "chroma"])
def t5_clip(host, request):
    return request.param, build_clip(request.param)


def test_words_are_split_as_clip_splits_them(pack, t5_clip, sd1_clip):
    family, clip = t5_clip
    tokens = pack.adapter.tokenize.prompt_tokens(clip, PROMPT, clip.tokenize(PROMPT))
    assert [w.text for w in tokens.words] == WORDS
    plain = "A red circle, a café on the left."  # CLIP keeps contractions together ("'t"); T5's pieces cannot
    t5_words = pack.adapter.tokenize.prompt_tokens(clip, plain, clip.tokenize(plain)).words
    clip_words = pack.adapter.tokenize.prompt_tokens(sd1_clip, plain, sd1_clip.tokenize(plain)).words
    assert [w.text for w in t5_words] == [w.text for w in clip_words]
    split = pack.adapter.tokenize.word_splitter(clip, clip.tokenize(PROMPT))
    assert split("Don't move") == ("don", "'", "t", "move")


def test_positions_index_the_conditioning(pack, t5_clip):
    """Every position is a row of the encoded prompt: words, one end token, then padding (Flux pads to 256)."""
    family, clip = t5_clip
    tokens = pack.adapter.tokenize.prompt_tokens(clip, PROMPT, clip.tokenize(PROMPT))
    cond = clip.encode_from_tokens_scheduled(clip.tokenize(PROMPT))[0][0]  # [1, L, D]
    assert tokens.length == cond.shape[1] == (256 if family == "flux" else len(tokens.content_positions()) + 1)
    roles = [p.role for p in tokens.pieces]
    end = roles.index("end")
    assert set(roles[:end]) == {"word"} and set(roles[end + 1 :]) <= {"pad"}
    assert [p.token for p in tokens.pieces[: end + 1]] == [t[0] for t in clip.tokenize(PROMPT)["t5xxl"][0]][: end + 1]


def test_a_long_prompt_is_one_sequence(pack, t5_clip):
    family, clip = t5_clip
    text = ", ".join(["a red circle on the left"] * 60)  # about 420 pieces, beyond Flux's 256
    tokens = pack.adapter.tokenize.prompt_tokens(clip, text, clip.tokenize(text))
    assert len(tokens.find(["circle"])) == 60
    assert tokens.length == clip.encode_from_tokens_scheduled(clip.tokenize(text))[0][0].shape[1]


def test_a_word_swap_maps_words_not_a_start_token(pack, t5_clip):
    """T5 has no start token: position 0 is the first word's, and a first word of another piece count ('a' is two
    pieces, '▁' and 'a'; 'the' is one) takes that word's attention, not position 0's alone."""
    family, clip = t5_clip
    source = pack.adapter.tokenize.prompt_tokens(clip, "a red circle", clip.tokenize("a red circle"))
    target = pack.adapter.tokenize.prompt_tokens(clip, "the blue circle", clip.tokenize("the blue circle"))
    mapping = pack.p2p.replace_mapping(source, target)
    assert source.words[0].positions == (0, 1) and target.words[0].positions == (0,)
    assert mapping.source_of(0) == [0, 1]
    assert mapping.source_of(1) == list(source.words[1].positions)  # blue <- red
    end_src, end_tgt = (next(i for i, p in enumerate(t.pieces) if p.role == "end") for t in (source, target))
    assert mapping.source_of(end_tgt) == [end_src]


def test_sd3_positions_are_clip_then_t5(pack):
    """SD3's conditioning is CLIP-L/G's 77 tokens then T5's 77 (more for a long prompt): the positions follow it, and
    a word has a column in each part, so a word swap maps CLIP columns to CLIP columns and T5 columns to T5 columns,
    end tokens to end tokens chunk by chunk."""
    clip = build_clip("sd3")
    plain = "a red circle on the left"

    def tokens(text):
        encoded = clip.encode_from_tokens_scheduled(clip.tokenize(text))[0][0]
        return pack.adapter.tokenize.prompt_tokens(clip, text, clip.tokenize(text), encoded.shape[1]), encoded

    source, encoded = tokens(plain)
    target, _ = tokens("a blue circle on the left")
    assert source.length == encoded.shape[1] == 154
    assert [p.role for p in source.pieces[:2]] == ["start", "word"] and source.pieces[77].role == "word"
    assert [w.text for w in source.words] == plain.split() * 2
    red = source.find(["red"])
    assert len(red) == 2 and red[0] < 77 <= red[1]
    mapping = pack.p2p.replace_mapping(source, target)
    blue = target.find(["blue"])
    assert [mapping.source_of(t) for t in blue] == [[red[0]], [red[1]]]
    long, encoded = tokens(", ".join([plain] * 20))  # two CLIP chunks, then T5's part of more than 77 tokens
    assert long.length == encoded.shape[1] and long.num_chunks == 3 and long.length - 154 > 77
    assert len(long.find(["red"])) == 40
    longer, _ = tokens(", ".join([plain] * 20) + " again")  # one more T5 token: the end tokens still match
    mapping = pack.p2p.replace_mapping(long, longer) if len(long.words) == len(longer.words) else \
        pack.p2p.refine_mapping(long, longer)
    ends = [[i for i, p in enumerate(t.pieces) if p.role == "end"] for t in (long, longer)]
    assert [mapping.source_of(t) for t in ends[1]] == [[s] for s in ends[0]]
