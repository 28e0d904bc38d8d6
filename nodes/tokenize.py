"""Read a CLIP tokenization as the engine's `PromptTokens`.

ComfyUI's CLIP tokenizers return, per text encoder, a list of 77-token chunks of (token, weight)
pairs: a start token, the prompt's BPE tokens, an end token, padding. A BPE piece whose vocabulary
entry ends in "</w>" closes a word.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..p2p import END, PAD, START, WORD, PromptTokens, TokenPiece

__all__ = ["prompt_tokens", "word_splitter", "layout_tokenizer"]

_WORD_END = "</w>"


def layout_tokenizer(clip, tokens: dict):
    """The SD-style tokenizer whose chunks describe the layout (CLIP-L where present)."""
    for key in sorted(tokens, key=lambda k: k != "l"):
        tok = getattr(clip.tokenizer, f"clip_{key}", None)
        if tok is not None and hasattr(tok, "inv_vocab"):
            return key, tok
    raise ValueError(
        "this CLIP has no CLIP-style tokenizer (SD1.x, SD2.x and SDXL text encoders are supported)"
    )


def _piece_text(tok, token: int) -> str:
    piece = tok.inv_vocab.get(token, "")
    return piece[: -len(_WORD_END)] if piece.endswith(_WORD_END) else piece


def prompt_tokens(clip, text: str, tokens: dict) -> PromptTokens:
    """Positions of one encoded prompt. `tokens` is what `clip.tokenize(text)` returned."""
    key, tok = layout_tokenizer(clip, tokens)
    pieces: list[TokenPiece] = []
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
                raw = tok.inv_vocab.get(int(token), "")
                pieces.append(TokenPiece(int(token), WORD, _piece_text(tok, int(token)), raw.endswith(_WORD_END)))
    return PromptTokens(text, tuple(pieces), chunk_length=len(tokens[key][0]))


def word_splitter(clip, tokens: dict) -> Callable[[str], list[str]]:
    """A function that splits a phrase into the words the prompts were split into."""
    _, tok = layout_tokenizer(clip, tokens)
    hf = tok.tokenizer

    def split(phrase: str) -> list[str]:
        words, current = [], ""
        for token in hf(phrase)["input_ids"][tok.tokens_start : -1]:
            current += _piece_text(tok, token)
            if tok.inv_vocab.get(token, "").endswith(_WORD_END):
                words.append(current)
                current = ""
        if current:
            words.append(current)
        return words

    return split
