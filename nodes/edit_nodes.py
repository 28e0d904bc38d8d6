"""Nodes that describe an edit: P2PEditSpec, P2PReweight, P2PLocalBlend."""

from __future__ import annotations

import logging

import torch

from ..p2p import (
    MODES,
    REWEIGHT_RANGE,
    EditBatch,
    LocalBlend,
    P2PError,
    make_edit,
    parse_phrases,
    parse_schedule,
    parse_weights,
)
from ..p2p.spec import fraction
from .bundle import P2P_EDIT, EditBundle
from .errors import input_error, node_input
from .tokenize import prompt_tokens, word_splitter

__all__ = ["P2PEditSpec", "P2PReweight", "P2PLocalBlend", "SELF_LAYERS"]

log = logging.getLogger("prompt_to_prompt")

CATEGORY = "prompt_to_prompt"

# Which self-attention layers get the source's map: name -> coarsest-to-finest cut (latent size / layer size)
SELF_LAYERS = {"coarse": 4, "coarse+medium": 2, "all": 1}

# Two CLIPs count as one text encoder when they encode the source prompt to within this relative difference:
# room for the rounding of one encoder run twice (half precision, another device); another encoder or another
# CLIP Set Last Layer differs by far more (1.4 and 0.6 on the test models).
SAME_ENCODING = 1e-2


def _encode(clip, text: str):
    tokens = clip.tokenize(text)
    return tokens, clip.encode_from_tokens_scheduled(tokens)


class P2PEditSpec:
    DESCRIPTION = (
        "Describes a Prompt-to-Prompt edit: the source prompt (what the picture shows) and an edited prompt. "
        "The edited image is generated beside the source with the source's attention injected, so only what the "
        "words changed changes. Chain several through 'previous' to make several edits in one batch."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = (P2P_EDIT,)
    RETURN_NAMES = ("edit",)
    OUTPUT_TOOLTIPS = ("The edit batch: the source prompt and every edited prompt so far.",)
    FUNCTION = "build"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "clip": ("CLIP", {"tooltip": "The text encoder of the model you sample with."}),
                "source_prompt": ("STRING", {"multiline": True, "default": "a photo of a cat riding a bicycle",
                                             "tooltip": "The prompt of the original picture."}),
                "target_prompt": ("STRING", {"multiline": True, "default": "a photo of a dog riding a bicycle",
                                             "tooltip": "The edited prompt: swap, add, remove or move words."}),
                "mode": (list(MODES), {"default": "auto", "tooltip":
                    "replace: word swap, both prompts have the same number of words and word i takes the attention "
                    "of word i. refine: words added, removed or moved; kept words are matched by alignment and new "
                    "words keep their own attention. auto: replace when the word counts match, else refine."}),
                "cross_replace": ("FLOAT", {"default": 0.8, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip":
                    "Fraction of the steps, from the start, during which the source's cross-attention maps are "
                    "injected. Higher keeps more of the layout; lower lets the new words reshape more."}),
                "self_replace": ("FLOAT", {"default": 0.4, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip":
                    "Fraction of the steps, from the start, during which the source's self-attention maps are "
                    "injected. Keeps shapes and details; 0.2-0.7 is the useful range."}),
                "self_layers": (list(SELF_LAYERS), {"default": "coarse", "tooltip":
                    "Self-attention layers that get the source's maps. coarse: 1/4 of the latent resolution and "
                    "below (16x16 at 512 px for SD1.5, as in the paper); coarse+medium: 1/2 and below; all: every "
                    "layer (affordable here: the map is never stored)."}),
            },
            "optional": {
                "word_schedule": ("STRING", {"multiline": False, "default": "", "tooltip":
                    "Per-word injection windows for words of the edited prompt, overriding cross_replace: "
                    "'car: 0.2, sunglasses: 0-0.5' (end, or start-end, as fractions of the steps). Each word "
                    "at most once."}),
                "previous": (P2P_EDIT, {"tooltip":
                    "An edit with the same source prompt and the same CLIP: this edit is added to its batch, so one "
                    "run makes all."}),
            },
        }

    def build(self, clip, source_prompt, target_prompt, mode, cross_replace, self_replace, self_layers,
              word_schedule="", previous=None):
        node = "P2PEditSpec"
        if clip is None:
            raise input_error(node, "clip", "no CLIP (the checkpoint loader found no text encoder)")
        try:
            src_tokens, src_cond = _encode(clip, source_prompt)
            source = prompt_tokens(clip, source_prompt, src_tokens)
            split = word_splitter(clip, src_tokens)
        except ValueError as e:
            raise input_error(node, "clip", str(e)) from None
        if previous is not None and previous.source_prompt.strip() != source_prompt.strip():
            raise input_error(node, "source_prompt",
                              f'differs from the source prompt of "previous" ("{previous.source_prompt}"); '
                              "every edit of one batch starts from the same source")
        if previous is not None:
            mismatch = _encoder_mismatch(previous.conditionings[0], src_cond)
            if mismatch:
                raise input_error(node, "previous", f"was encoded by another text encoder: {mismatch}. Connect the "
                                  "same CLIP (the same checkpoint, CLIP LoRA and CLIP Set Last Layer) to every edit "
                                  "of a batch")
        for name, value in (("cross_replace", cross_replace), ("self_replace", self_replace)):
            with node_input(node, name):
                fraction(value)
        tgt_tokens, tgt_cond = _encode(clip, target_prompt)
        target = prompt_tokens(clip, target_prompt, tgt_tokens)
        with node_input(node, "target_prompt"):  # the word counts of a swap; the mode is a checked combo
            edit = make_edit(source, target, mode, cross_replace, self_replace, SELF_LAYERS[self_layers])
        with node_input(node, "word_schedule"):
            schedule = parse_schedule(word_schedule)
            if schedule:
                edit = edit.scheduled([(split(phrase), window) for phrase, window in schedule])
        if previous is None:
            return (EditBundle(EditBatch(source, (edit,)), (src_cond, tgt_cond), split),)
        return (previous.with_batch(previous.batch.with_edit(edit), tgt_cond),)


class P2PReweight:
    DESCRIPTION = (
        "Re-weights words of the last edited prompt (the paper's attention fader): >1 strengthens a word, "
        "values between 0 and 1 weaken it, negative values push it away. Acts while cross-attention is injected."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = (P2P_EDIT,)
    RETURN_NAMES = ("edit",)
    FUNCTION = "reweight"

    @classmethod
    def INPUT_TYPES(cls):
        lo, hi = REWEIGHT_RANGE
        return {
            "required": {
                "edit": (P2P_EDIT, {"tooltip": "The edit whose last edited prompt is re-weighted."}),
                "weights": ("STRING", {"multiline": False, "default": "", "tooltip":
                    f"Words of the edited prompt and their attention weights, {lo:g} to {hi:g}: "
                    "'fluffy: -2, red: 1.5, hat: 1e-3'. A phrase of several words re-weights each of them. Each "
                    "word at most once; a second P2P Reweight multiplies."}),
            }
        }

    def reweight(self, edit: EditBundle, weights: str):
        node = "P2PReweight"
        last = edit.batch.edits[-1]
        with node_input(node, "weights"):
            entries = parse_weights(weights)
            if not entries:
                raise input_error(node, "weights", "no 'word: weight' entries given")
            last = last.reweighted([(edit.split_words(phrase), weight) for phrase, weight in entries])
        return (edit.with_batch(edit.batch.with_last(last)),)


class P2PLocalBlend:
    DESCRIPTION = (
        "Restricts the last edit to where the named words are: from 'start' on, the edited image is kept equal to "
        "the source outside a mask made from the attention of the source and target words."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = (P2P_EDIT,)
    RETURN_NAMES = ("edit",)
    FUNCTION = "blend"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "edit": (P2P_EDIT, {"tooltip": "The edit whose last edited prompt is blended locally."}),
                "source_words": ("STRING", {"default": "", "tooltip":
                    "Words of the source prompt marking the region to edit, separated by commas "
                    "('cat' or 'cat, hat')."}),
                "target_words": ("STRING", {"default": "", "tooltip":
                    "Words of the edited prompt marking the region to edit ('dog'). Either side may be empty."}),
                "threshold": ("FLOAT", {"default": 0.3, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip":
                    "Fraction of the strongest attention above which a pixel belongs to the edited region. "
                    "Lower grows the region; at 1 the region is empty."}),
                "start": ("FLOAT", {"default": 0.2, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip":
                    "Fraction of the steps after which blending starts (the mask needs a few steps to settle)."}),
            },
            "optional": {
                "subtract_words": ("STRING", {"default": "", "tooltip":
                    "Words (of either prompt) whose region is excluded from the edit, e.g. an object to protect."}),
            },
        }

    def blend(self, edit: EditBundle, source_words, target_words, threshold, start, subtract_words=""):
        node = "P2PLocalBlend"
        batch, last = edit.batch, edit.batch.edits[-1]

        def positions(tokens, text, input_name):
            with node_input(node, input_name):
                return tuple(p for phrase in parse_phrases(text) for p in tokens.find(edit.split_words(phrase)))

        source_pos = positions(batch.source, source_words, "source_words")
        target_pos = positions(last.target, target_words, "target_words")
        if not source_pos and not target_pos:
            raise input_error(node, "source_words", "name at least one word of the source or the edited prompt")
        sub_source, sub_target = [], []
        for phrase in parse_phrases(subtract_words):
            found = [_find_or_none(tokens, edit.split_words(phrase)) for tokens in (batch.source, last.target)]
            if found == [None, None]:
                raise input_error(node, "subtract_words", f'"{phrase}" is in neither prompt')
            sub_source += found[0] or ()
            sub_target += found[1] or ()
        for name, value in (("threshold", threshold), ("start", start)):
            with node_input(node, name):
                fraction(value)
        spec = LocalBlend(source_pos, target_pos, tuple(sub_source), tuple(sub_target), threshold, start)
        for name, reason in spec.no_effect():
            log.warning("%s: input '%s' %s; this local blend cannot change anything", node, name, reason)
        return (edit.with_batch(batch.with_last(last.blended(spec))),)


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


def _find_or_none(tokens, words):
    try:
        return tokens.find(words)
    except P2PError:
        return None
