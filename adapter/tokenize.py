"""Read a CLIP tokenization as the engine's `PromptTokens`.

ComfyUI's CLIP tokenizers return, per text encoder, a list of 77-token chunks of (token, weight)
pairs: a start token, the prompt's BPE tokens, an end token, padding. A BPE piece whose vocabulary
entry ends in "</w>" closes a word.

T5 (Flux's and Chroma's text encoder; its tokens are their whole text conditioning) uses sentencepiece: a piece
starting with "▁" starts a word, and there is no start token, one end token and padding. Its words are split as
CLIP splits them (punctuation is a word of its own), so a word names the same thing for either encoder.

CLIP's BPE is byte-level: a vocabulary entry spells UTF-8 bytes with one stand-in symbol per byte ("café" is
"cafÃ©"), and one character may be split over several tokens ("猫" is three). Pieces carry decoded text, so
words are compared and shown as what the user typed (after CLIP's own lower-casing and NFC composition).
"""

from __future__ import annotations

import codecs
import unicodedata
from collections.abc import Callable
from types import MappingProxyType

import torch

from ..p2p import END, PAD, START, WORD, PromptTokens, TokenPiece

__all__ = ["prompt_tokens", "word_splitter", "layout_tokenizer", "t5_tokenizer", "WordSplitter"]

WordSplitter = Callable[[str], tuple[str, ...]]  # a phrase -> the words the prompts were split into

_WORD_END = "</w>"
_T5_WORD_START = "\u2581"  # sentencepiece's "▁"


def _byte_of_symbol() -> dict[str, int]:
    """Byte-level BPE's stand-in symbols, inverted: GPT-2's `bytes_to_unicode`, which CLIP's tokenizer uses.
    Built here because HF's fast CLIPTokenizer (transformers 5) no longer exposes a `byte_decoder`."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols = {b: chr(b) for b in printable}
    others = [b for b in range(256) if b not in symbols]
    symbols.update({b: chr(256 + n) for n, b in enumerate(others)})
    return {symbol: b for b, symbol in symbols.items()}


_BYTE_OF_SYMBOL = MappingProxyType(_byte_of_symbol())


class _WordText:
    """Decodes a prompt's BPE pieces in order. Each piece gets the characters its bytes complete: a character
    split over several pieces goes to the piece with its last byte, so a word's pieces always join to the
    decoding of the word's whole byte sequence."""

    def __init__(self):
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def piece(self, entry: str) -> tuple[str, bool]:
        """(text, ends a word) of one vocabulary entry."""
        ends_word = entry.endswith(_WORD_END)
        symbols = entry[: -len(_WORD_END)] if ends_word else entry
        # every entry of a byte-level vocabulary is stand-in symbols; anything else is kept as its own text
        data = b"".join(bytes([_BYTE_OF_SYMBOL[c]]) if c in _BYTE_OF_SYMBOL else c.encode() for c in symbols)
        text = self._utf8.decode(data, final=ends_word)
        if ends_word:
            self._utf8.reset()
        return text, ends_word


def layout_tokenizer(clip, tokens: dict):
    """The SD-style tokenizer whose chunks describe the layout (CLIP-L where present)."""
    for key in sorted(tokens, key=lambda k: k != "l"):
        tok = getattr(clip.tokenizer, f"clip_{key}", None)
        if tok is not None and hasattr(tok, "inv_vocab"):
            return key, tok
    raise ValueError(
        "this CLIP has no CLIP-style tokenizer (SD1.x, SD2.x and SDXL text encoders are supported)"
    )


def t5_tokenizer(clip, tokens: dict):
    """The T5 tokenizer when T5's tokens are the whole text conditioning (Flux: CLIP-L gives only the pooled
    output; Chroma: T5 alone), else None. SD3, whose conditioning is CLIP's tokens then T5's, is not one."""
    if "t5xxl" not in tokens or "g" in tokens:
        return None
    tok = getattr(clip.tokenizer, "t5xxl", None) or getattr(clip.tokenizer, "clip_t5xxl", None)
    return tok if hasattr(tok, "inv_vocab") else None


def _is_punctuation(text: str) -> bool:
    return bool(text) and all(unicodedata.category(c).startswith("P") for c in text)


def _t5_words(entries: list[str]) -> list[tuple[str, bool]]:
    """(lower-cased text, starts a word) of each sentencepiece entry: "▁" starts a word, and a piece of punctuation
    is a word of its own (so the piece after it starts one too), as CLIP splits words."""
    out, after_punctuation = [], False
    for entry in entries:
        body = entry.removeprefix(_T5_WORD_START)
        punctuation = _is_punctuation(body)
        out.append((body.lower(), not out or entry.startswith(_T5_WORD_START) or punctuation or after_punctuation))
        after_punctuation = punctuation
    return out


def _t5_prompt_tokens(tok, text: str, chunks: list) -> PromptTokens:
    """T5's tokens as one chunk: the words, the end token, the padding (Flux pads to 256, Chroma does not)."""
    ids = [t[0] for chunk in chunks for t in chunk]
    end = next((i for i, t in enumerate(ids) if not isinstance(t, torch.Tensor) and t == tok.end_token), len(ids))
    entries = ["<embedding>" if isinstance(t, torch.Tensor) else tok.inv_vocab.get(int(t), "") for t in ids[:end]]
    words = _t5_words(entries)
    pieces = [TokenPiece(-1 if isinstance(t, torch.Tensor) else int(t), WORD, piece_text,
                         i + 1 == end or words[i + 1][1])
              for i, (t, (piece_text, _)) in enumerate(zip(ids[:end], words, strict=True))]
    pieces += [TokenPiece(int(t), END if i == end else PAD) for i, t in enumerate(ids[end:], start=end)]
    return PromptTokens(text, tuple(pieces), chunk_length=len(pieces))


def prompt_tokens(clip, text: str, tokens: dict, encoded_length: int | None = None) -> PromptTokens:
    """Positions of one encoded prompt. `tokens` is what `clip.tokenize(text)` returned; `encoded_length` the
    number of tokens its conditioning has (it tells which of SD3's encoders are loaded)."""
    t5 = t5_tokenizer(clip, tokens)
    if t5 is not None:
        return _t5_prompt_tokens(t5, text, tokens["t5xxl"])
    clip_tokens = _clip_prompt_tokens(clip, text, tokens)
    sd3_t5 = getattr(clip.tokenizer, "t5xxl", None) if "g" in tokens and "t5xxl" in tokens else None
    if sd3_t5 is None or encoded_length is None or encoded_length == clip_tokens.length:
        return clip_tokens
    # SD3: CLIP-L/G's chunks, then T5's tokens (or T5's alone, without CLIP-L/G), in one sequence
    t5_tokens = _t5_prompt_tokens(sd3_t5, text, tokens["t5xxl"])
    if encoded_length == t5_tokens.length:
        return t5_tokens
    pieces = clip_tokens.pieces + t5_tokens.pieces
    if encoded_length != len(pieces):
        return clip_tokens  # another layout: the guider says that its words cannot be placed
    return PromptTokens(text, pieces, chunk_length=clip_tokens.chunk_length, extra_chunks=(t5_tokens.length,))


def _clip_prompt_tokens(clip, text: str, tokens: dict) -> PromptTokens:
    key, tok = layout_tokenizer(clip, tokens)
    pieces: list[TokenPiece] = []
    word_text = _WordText()  # one stream over the chunks: a long word may continue in the next chunk
    for chunk in tokens[key]:
        ids = [t[0] for t in chunk]
        content_done = False
        for i, token in enumerate(ids):
            is_embedding = isinstance(token, torch.Tensor)
            if i == 0 and tok.start_token is not None and not is_embedding and token == tok.start_token:
                pieces.append(TokenPiece(int(token), START))
            elif not is_embedding and token == tok.end_token and not content_done:
                content_done = True
                pieces.append(TokenPiece(int(token), END))
            elif content_done:
                pieces.append(TokenPiece(int(token) if not is_embedding else -1, PAD))
            elif is_embedding:
                nxt = ids[i + 1] if i + 1 < len(ids) else None
                pieces.append(TokenPiece(-1, WORD, "<embedding>", not isinstance(nxt, torch.Tensor)))
            else:
                piece_text, ends_word = word_text.piece(tok.inv_vocab.get(int(token), ""))
                pieces.append(TokenPiece(int(token), WORD, piece_text, ends_word))
    return PromptTokens(text, tuple(pieces), chunk_length=len(tokens[key][0]))


def word_splitter(clip, tokens: dict) -> WordSplitter:
    """A function that splits a phrase into the words the prompts were split into."""
    t5 = t5_tokenizer(clip, tokens)
    if t5 is not None:
        def split_t5(phrase: str) -> tuple[str, ...]:
            entries = [t5.inv_vocab.get(t, "") for t in t5.tokenizer(phrase)["input_ids"] if t != t5.end_token]
            words: list[str] = []
            for piece_text, starts in _t5_words(entries):
                if starts or not words:
                    words.append(piece_text)
                else:
                    words[-1] += piece_text
            return tuple(w for w in words if w)

        return split_t5
    _, tok = layout_tokenizer(clip, tokens)
    hf = tok.tokenizer

    def split(phrase: str) -> tuple[str, ...]:
        words, current, word_text = [], "", _WordText()
        for token in hf(phrase)["input_ids"][tok.tokens_start : -1]:
            piece_text, ends_word = word_text.piece(tok.inv_vocab.get(token, ""))
            current += piece_text
            if ends_word:
                words.append(current)
                current = ""
        if current:
            words.append(current)
        return tuple(words)

    return split
