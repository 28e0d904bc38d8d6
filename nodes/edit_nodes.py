"""Nodes that describe an edit: P2PEditSpec, P2PReweight, P2PLocalBlend."""

from __future__ import annotations

from comfy_api.latest import io

from ..adapter.edits import SELF_LAYERS, BlendSettings, EditSettings, edit_spec, local_blend, reweight
from ..p2p import MODES, REWEIGHT_RANGE
from .sockets import CATEGORY, Edit

__all__ = ["P2PEditSpec", "P2PReweight", "P2PLocalBlend"]


class P2PEditSpec(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="P2PEditSpec",
            display_name="P2P Edit Spec",
            category=CATEGORY,
            description="Describes a Prompt-to-Prompt edit: the source prompt (what the picture shows) and an edited "
            "prompt. The edited image is generated beside the source with the source's attention injected, so only "
            "what the words changed changes. Chain several through 'previous' to make several edits in one batch.",
            inputs=[
                io.Clip.Input("clip", tooltip="The text encoder of the model you sample with."),
                io.String.Input("source_prompt", multiline=True, default="a photo of a cat riding a bicycle",
                                tooltip="The prompt of the original picture."),
                io.String.Input("target_prompt", multiline=True, default="a photo of a dog riding a bicycle",
                                tooltip="The edited prompt: swap, add, remove or move words."),
                io.Combo.Input("mode", options=list(MODES), default="auto", tooltip=(
                    "replace: word swap, both prompts have the same number of words and word i takes the attention "
                    "of word i. refine: words added, removed or moved; kept words are matched by alignment and new "
                    "words keep their own attention. auto: replace when the word counts match, else refine.")),
                io.Float.Input("cross_replace", default=0.8, min=0.0, max=1.0, step=0.01, tooltip=(
                    "Fraction of the steps, from the start, during which the source's cross-attention maps are "
                    "injected. Higher keeps more of the layout; lower lets the new words reshape more.")),
                io.Float.Input("self_replace", default=0.4, min=0.0, max=1.0, step=0.01, tooltip=(
                    "Fraction of the steps, from the start, during which the source's self-attention maps are "
                    "injected. Keeps shapes and details; 0.2-0.7 is the useful range.")),
                io.Combo.Input("self_layers", options=list(SELF_LAYERS), default="coarse", tooltip=(
                    "Self-attention layers that get the source's maps. coarse: 1/4 of the latent resolution and "
                    "below (16x16 at 512 px for SD1.5, as in the paper); coarse+medium: 1/2 and below; all: every "
                    "layer (affordable here: the map is never stored). Flux, Chroma and SD3 have no resolutions: "
                    "there every joint block gets the source's image queries and keys, whatever this says.")),
                io.String.Input("word_schedule", default="", optional=True, tooltip=(
                    "Per-word injection windows for words of the edited prompt, overriding cross_replace: "
                    "'car: 0.2, sunglasses: 0-0.5' (end, or start-end, as fractions of the steps). Each word "
                    "at most once.")),
                Edit.Input("previous", optional=True, tooltip=(
                    "An edit with the same source prompt and the same CLIP: this edit is added to its batch, so one "
                    "run makes all.")),
            ],
            outputs=[Edit.Output(display_name="edit",
                                 tooltip="The edit batch: the source prompt and every edited prompt so far.")],
        )

    @classmethod
    def execute(cls, clip, source_prompt, target_prompt, mode, cross_replace, self_replace, self_layers,
                word_schedule="", previous=None) -> io.NodeOutput:
        settings = EditSettings(source_prompt, target_prompt, mode, cross_replace, self_replace, self_layers,
                                word_schedule)
        return io.NodeOutput(edit_spec("P2PEditSpec", clip, settings, previous))


class P2PReweight(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        lo, hi = REWEIGHT_RANGE
        return io.Schema(
            node_id="P2PReweight",
            display_name="P2P Reweight",
            category=CATEGORY,
            description="Re-weights words of the last edited prompt (the paper's attention fader): >1 strengthens a "
            "word, values between 0 and 1 weaken it, negative values push it away. Acts while cross-attention is "
            "injected.",
            inputs=[
                Edit.Input("edit", tooltip="The edit whose last edited prompt is re-weighted."),
                io.String.Input("weights", default="", tooltip=(
                    f"Words of the edited prompt and their attention weights, {lo:g} to {hi:g}: "
                    "'fluffy: -2, red: 1.5, hat: 1e-3'. A phrase of several words re-weights each of them. Each "
                    "word at most once; a second P2P Reweight multiplies.")),
            ],
            outputs=[Edit.Output(display_name="edit")],
        )

    @classmethod
    def execute(cls, edit, weights) -> io.NodeOutput:
        return io.NodeOutput(reweight("P2PReweight", edit, weights))


class P2PLocalBlend(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="P2PLocalBlend",
            display_name="P2P Local Blend",
            category=CATEGORY,
            description="Restricts the last edit to where the named words are: from 'start' on, the edited image is "
            "kept equal to the source outside a mask made from the attention of the source and target words, "
            "or given as a MASK (drawn, or a segment from P2P Attention Segments), or both united.",
            inputs=[
                Edit.Input("edit", tooltip="The edit whose last edited prompt is blended locally."),
                io.String.Input("source_words", default="", tooltip=(
                    "Words of the source prompt marking the region to edit, separated by commas "
                    "('cat' or 'cat, hat').")),
                io.String.Input("target_words", default="", tooltip=(
                    "Words of the edited prompt marking the region to edit ('dog'). Either side may be empty.")),
                io.Float.Input("threshold", default=0.3, min=0.0, max=1.0, step=0.01, tooltip=(
                    "Fraction of the strongest attention above which a pixel belongs to the edited region. "
                    "Lower grows the region; at 1 the region is empty.")),
                io.Float.Input("start", default=0.2, min=0.0, max=1.0, step=0.01, tooltip=(
                    "Fraction of the steps after which blending starts (the mask needs a few steps to settle).")),
                io.String.Input("subtract_words", default="", optional=True, tooltip=(
                    "Words (of either prompt) whose region is excluded from the edit, e.g. an object to protect.")),
                io.Mask.Input("mask", optional=True, tooltip=(
                    "A region to edit, united with the words' region (the words may then be empty): any size, "
                    "scaled to the latent (a cell is in where the mask averages above 0.5); a batch of masks is "
                    "united. P2P Attention Segments gives one per word.")),
            ],
            outputs=[Edit.Output(display_name="edit")],
        )

    @classmethod
    def execute(cls, edit, source_words, target_words, threshold, start, subtract_words="",
                mask=None) -> io.NodeOutput:
        settings = BlendSettings(source_words, target_words, threshold, start, subtract_words, mask)
        return io.NodeOutput(local_blend("P2PLocalBlend", edit, settings))
