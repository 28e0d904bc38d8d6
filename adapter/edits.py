"""Building the P2P_EDIT value: encoding the prompts, checking one batch shares a text encoder, and turning
the text inputs of the edit nodes into the engine's edits."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from ..p2p import EditBatch, LocalBlend, P2PError, make_edit, parse_phrases, parse_schedule, parse_weights
from ..p2p.spec import fraction
from .bundle import EditBundle
from .errors import input_error, node_input
from .tokenize import prompt_tokens, word_splitter

__all__ = ["SELF_LAYERS", "EditSettings", "BlendSettings", "edit_spec", "reweight", "local_blend", "mask_region"]

log = logging.getLogger("prompt_to_prompt")

# Which self-attention layers get the source's map: name -> coarsest-to-finest cut (latent size / layer size)
SELF_LAYERS = {"coarse": 4, "coarse+medium": 2, "all": 1}

# Two CLIPs count as one text encoder when they encode the source prompt to within this relative difference:
# room for the rounding of one encoder run twice (half precision, another device); another encoder or another
# CLIP Set Last Layer differs by far more (1.4 and 0.6 on the test models).
SAME_ENCODING = 1e-2


@dataclass(frozen=True)
class EditSettings:
    """P2PEditSpec's inputs other than the CLIP and the previous edit."""

    source_prompt: str
    target_prompt: str
    mode: str
    cross_replace: float
    self_replace: float
    self_layers: str
    word_schedule: str = ""


@dataclass(frozen=True)
class BlendSettings:
    """P2PLocalBlend's inputs other than the edit."""

    source_words: str
    target_words: str
    threshold: float
    start: float
    subtract_words: str = ""
    mask: torch.Tensor | None = None  # a MASK [B, H, W] or [H, W]: its batch is united


def _encode(clip, text: str):
    tokens = clip.tokenize(text)
    return tokens, clip.encode_from_tokens_scheduled(tokens)


def edit_spec(node: str, clip, s: EditSettings, previous: EditBundle | None) -> EditBundle:
    """A new edit batch, or `previous` with one more edit."""
    if clip is None:
        raise input_error(node, "clip", "no CLIP (the checkpoint loader found no text encoder)")
    try:
        src_tokens, src_cond = _encode(clip, s.source_prompt)
        source = prompt_tokens(clip, s.source_prompt, src_tokens, src_cond[0][0].shape[1])
        split = word_splitter(clip, src_tokens)
    except ValueError as e:
        raise input_error(node, "clip", str(e)) from None
    if previous is not None:
        _check_same_source(node, previous, s.source_prompt, src_cond)
    for name in ("cross_replace", "self_replace"):
        with node_input(node, name):
            fraction(getattr(s, name))
    tgt_tokens, tgt_cond = _encode(clip, s.target_prompt)
    target = prompt_tokens(clip, s.target_prompt, tgt_tokens, tgt_cond[0][0].shape[1])
    with node_input(node, "target_prompt"):  # the word counts of a swap; the mode is a checked combo
        edit = make_edit(source, target, s.mode, s.cross_replace, s.self_replace, SELF_LAYERS[s.self_layers])
    with node_input(node, "word_schedule"):
        schedule = parse_schedule(s.word_schedule)
        if schedule:
            edit = edit.scheduled([(split(phrase), window) for phrase, window in schedule])
    if previous is None:
        return EditBundle(EditBatch(source, (edit,)), (src_cond, tgt_cond), split)
    return previous.with_batch(previous.batch.with_edit(edit), tgt_cond)


def _check_same_source(node: str, previous: EditBundle, source_prompt: str, src_cond) -> None:
    if previous.source_prompt.strip() != source_prompt.strip():
        raise input_error(node, "source_prompt",
                          f'differs from the source prompt of "previous" ("{previous.source_prompt}"); '
                          "every edit of one batch starts from the same source")
    mismatch = _encoder_mismatch(previous.conditionings[0], src_cond)
    if mismatch:
        raise input_error(node, "previous", f"was encoded by another text encoder: {mismatch}. Connect the "
                          "same CLIP (the same checkpoint, CLIP LoRA and CLIP Set Last Layer) to every edit "
                          "of a batch")


def _encoder_mismatch(previous_source, source) -> str | None:
    """How the CLIP of `previous` differs from this node's CLIP, or None when they are one text encoder.

    Both encoded the same source prompt, so their encodings are compared, not the objects: a CLIP keeps its
    encoder through ComfyUI's cache and through clip.clone() (CLIP Set Last Layer, LoRA loaders), yet a LoRA or
    another last layer encodes differently, while two loaders of one checkpoint encode alike.
    """
    before, now = previous_source[0][0], source[0][0]  # [1, L, D]: the tensor of the first conditioning entry
    if before.shape[-1] != now.shape[-1]:
        return f"its CLIP has width {before.shape[-1]}, the CLIP connected here {now.shape[-1]}"
    if before.shape != now.shape:
        return (f"its CLIP encodes the source prompt to {before.shape[1]} tokens, the CLIP connected here to "
                f"{now.shape[1]}")
    before, now = before.float().cpu(), now.float().cpu()
    difference = ((before - now).norm() / now.norm().clamp_min(torch.finfo(torch.float32).tiny)).item()
    if not difference <= SAME_ENCODING:  # NaN too
        return (f"its CLIP encodes the source prompt differently from the CLIP connected here (relative "
                f"difference {difference:.3g})")
    return None


def reweight(node: str, edit: EditBundle, weights: str) -> EditBundle:
    """The last edit with the words of `weights` ('word: weight, ...') re-weighted."""
    last = edit.batch.edits[-1]
    with node_input(node, "weights"):
        entries = parse_weights(weights)
        if not entries:
            raise input_error(node, "weights", "no 'word: weight' entries given")
        last = last.reweighted([(edit.split_words(phrase), weight) for phrase, weight in entries])
    return edit.with_batch(edit.batch.with_last(last))


def local_blend(node: str, edit: EditBundle, s: BlendSettings) -> EditBundle:
    """The last edit restricted to where the named words are."""
    batch, last = edit.batch, edit.batch.edits[-1]

    def positions(tokens, text, input_name):
        with node_input(node, input_name):
            return tuple(p for phrase in parse_phrases(text) for p in tokens.find(edit.split_words(phrase)))

    source_pos = positions(batch.source, s.source_words, "source_words")
    target_pos = positions(last.target, s.target_words, "target_words")
    region = None if s.mask is None else mask_region(node, "mask", s.mask)
    if not source_pos and not target_pos and region is None:
        raise input_error(node, "source_words", "name at least one word of the source or the edited prompt, or "
                          "connect a mask")
    sub_source, sub_target = [], []
    for phrase in parse_phrases(s.subtract_words):
        found = [_find_or_none(tokens, edit.split_words(phrase)) for tokens in (batch.source, last.target)]
        if found == [None, None]:
            raise input_error(node, "subtract_words", f'"{phrase}" is in neither prompt')
        sub_source += found[0] or ()
        sub_target += found[1] or ()
    for name in ("threshold", "start"):
        with node_input(node, name):
            fraction(getattr(s, name))
    with node_input(node, "mask"):
        spec = LocalBlend(source_pos, target_pos, tuple(sub_source), tuple(sub_target), s.threshold, s.start, region)
    for name, reason in spec.no_effect():
        log.warning("%s: input '%s' %s; this local blend cannot change anything", node, name, reason)
    return edit.with_batch(batch.with_last(last.blended(spec)))


def mask_region(node: str, name: str, mask: torch.Tensor) -> torch.Tensor:
    """The MASK input `name` ([B, H, W] or [H, W], any size) as one [H, W] float region: the union of its batch."""
    if mask.ndim not in (2, 3) or mask.numel() == 0:
        raise input_error(node, name, f"is of shape {tuple(mask.shape)}; a MASK is [batch, height, width]")
    region = (mask if mask.ndim == 2 else mask.amax(dim=0)).detach().float().cpu()
    if not bool(torch.isfinite(region).all()):
        raise input_error(node, name, "holds NaN or infinite values")
    return region


def _find_or_none(tokens, words):
    try:
        return tokens.find(words)
    except P2PError:
        return None
