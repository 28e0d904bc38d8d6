"""Attention heatmaps: P2PAttentionCapture, P2PAttentionMaps, and P2PGuiderAttention for P2PGuider's runs."""

from __future__ import annotations

from comfy_api.latest import io, ui

from ..adapter.attention_view import GRID_COLUMNS, draw
from ..adapter.errors import input_error, node_input
from ..adapter.sampling import EditGuider
from ..adapter.segments_view import NODE as SEGMENTS_NODE
from ..adapter.segments_view import SEGMENT_COLOURS, segments_view
from ..adapter.unet import MIN_MAP_SIDE
from ..p2p import LAYER_GROUPS, CaptureSpec, Window
from ..p2p.segments import LABEL_THRESHOLD, SEGMENTS
from .sockets import CATEGORY, Attention, Capture

__all__ = ["P2PAttentionCapture", "P2PAttentionMaps", "P2PAttentionSegments", "P2PGuiderAttention", "RESOLUTIONS"]

RESOLUTIONS = {"auto": None, "1/1": 1, "1/2": 2, "1/4": 4, "1/8": 8}


class P2PAttentionCapture(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="P2PAttentionCapture",
            display_name="P2P Attention Capture",
            category=CATEGORY,
            description="Chooses which attention maps P2P Sampler (or P2P Guider) captures for its attention "
            "output. Without this node the paper's choice is captured: the layers at 1/4 of the latent size "
            f"(16x16 for SD1.5 at 512 px; finer where that gives maps under {MIN_MAP_SIDE}x{MIN_MAP_SIDE}), down and "
            "up blocks, all steps.",
            inputs=[
                io.Boolean.Input("enabled", default=True, tooltip=(
                    "Off: nothing is captured and capturing costs nothing; the `attention` output is then empty.")),
                io.Combo.Input("resolution", options=list(RESOLUTIONS), default="auto", tooltip=(
                    "Layers whose maps are captured, by size relative to the latent. auto: 1/4 (the paper's 16x16 "
                    f"maps at 512 px), or finer where 1/4 would give maps under {MIN_MAP_SIDE}x{MIN_MAP_SIDE} (a small "
                    "latent, as the demo model's); finer maps are sharper but noisier.")),
                io.Float.Input("start", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip="First step averaged, as a fraction of the steps."),
                io.Float.Input("end", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Steps before this fraction are averaged (1 = through the last step)."),
                io.Combo.Input("layers", options=list(LAYER_GROUPS), default="down+up", tooltip=(
                    "UNet blocks averaged: down (encoder), middle, up (decoder); the paper uses down+up.")),
                io.Boolean.Input("per_step", default=False, tooltip=(
                    "Also keep one map per step (P2P Attention Maps then adds rows for a few steps, showing at most "
                    f"{GRID_COLUMNS} words). Uses memory in proportion to the steps.")),
                io.Boolean.Input("self_attention", default=True, tooltip=(
                    "Also average the self-attention maps, for the principal-components view (kept only for "
                    "layers of at most 32x32).")),
            ],
            outputs=[Capture.Output(display_name="capture",
                                    tooltip="Connect to P2P Sampler's or P2P Guider's `capture` input.")],
        )

    @classmethod
    def execute(cls, enabled, resolution, start, end, layers, per_step, self_attention) -> io.NodeOutput:
        node = "P2PAttentionCapture"
        if not enabled:
            return io.NodeOutput(None)
        if end <= start:
            raise input_error(node, "end", f"must be after start ({start}), got {end}")
        with node_input(node, "start"):
            window = Window(start, end)
        return io.NodeOutput(CaptureSpec(RESOLUTIONS[resolution], window, layers, per_step, self_attention))


class P2PAttentionMaps(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="P2PAttentionMaps",
            display_name="P2P Attention Maps",
            category=CATEGORY,
            description="Shows where each word of a prompt attended during sampling: one heatmap per word over the "
            "picture (as in the paper), drawn inside this node where you can pick words, the item and the opacity, "
            "and as an image grid. Also the top principal components of the self-attention maps.",
            is_output_node=True,
            inputs=[
                Attention.Input("attention", tooltip="P2P Sampler's (or P2P Guider Attention's) `attention` output."),
                io.Image.Input("images", tooltip="The decoded batch of that run: source first, then each edit."),
                io.Int.Input("item", default=0, min=0, max=64, tooltip=(
                    "Which picture the image outputs show: 0 = the source, k = edit k. The view inside the node "
                    "can switch between all of them.")),
                io.Int.Input("components", default=6, min=1, max=16,
                             tooltip="How many self-attention principal components to show."),
                io.String.Input("words", default="", optional=True, tooltip=(
                    "Words or phrases to show, comma-separated (for example \"cat, red hat\"); a phrase's tokens are "
                    "summed. Empty: every word of each prompt.")),
            ],
            outputs=[
                io.Image.Output(display_name="heatmaps", tooltip=(
                    "A labelled grid: the picture, then each word's heatmap over it (plus the local-blend mask of a "
                    "blended edit).")),
                io.Image.Output(display_name="components", tooltip=(
                    "The picture and the top principal components of its self-attention maps (the layout the model "
                    "holds).")),
            ],
        )

    @classmethod
    def execute(cls, attention, images, item, components, words="") -> io.NodeOutput:
        drawing = draw("P2PAttentionMaps", attention, images, item, components, words)
        return io.NodeOutput(drawing.heatmaps, drawing.components, ui={"p2p_attention": [drawing.payload]})


class P2PGuiderAttention(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="P2PGuiderAttention",
            display_name="P2P Guider Attention",
            category=CATEGORY,
            description="The attention maps a P2P Guider captured while SamplerCustomAdvanced sampled the given "
            "latent, for P2P Attention Maps.",
            inputs=[
                io.Guider.Input("guider", tooltip="The P2P Guider the sampler used."),
                io.Latent.Input("latent", tooltip="SamplerCustomAdvanced's `output`: whose run's maps to take."),
            ],
            outputs=[Attention.Output(display_name="attention", tooltip="For P2P Attention Maps.")],
        )

    @classmethod
    def execute(cls, guider, latent) -> io.NodeOutput:
        node = "P2PGuiderAttention"
        if not isinstance(guider, EditGuider):
            raise input_error(node, "guider", f"is a {type(guider).__name__}, not a P2P Guider")
        attention = guider.attention_of(latent["samples"])
        if attention is None:
            raise input_error(node, "latent", "is not a latent this P2P Guider made: connect the `output` of the "
                              "SamplerCustomAdvanced that used this guider")
        return io.NodeOutput(attention)


class P2PAttentionSegments(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=SEGMENTS_NODE,
            display_name="P2P Attention Segments",
            category=CATEGORY,
            description="Splits a picture into segments by its self-attention (cells that attend alike belong "
            "together; k-means, as Patashnik et al., ICCV 2023) and labels each segment with the word whose "
            "cross-attention falls on it. Gives a mask per word, e.g. for P2P Local Blend's mask input.",
            is_output_node=True,
            inputs=[
                Attention.Input("attention", tooltip=(
                    "P2P Sampler's (or P2P Guider Attention's) attention output, captured with self_attention on "
                    "(P2P Attention Capture; resolution 1/2 gives finer segments on SD1.5).")),
                io.Int.Input("item", default=0, min=0, max=64, tooltip="Which picture: 0 = the source, k = edit k."),
                io.Int.Input("segments", default=SEGMENTS, min=2, max=len(SEGMENT_COLOURS), tooltip=(
                    "How many segments to split the picture into (the paper's 5); at most the maps' cell count.")),
                io.String.Input("words", default="", tooltip=(
                    "The words or phrases to label segments with, comma-separated ('cat, red hat'). Empty: every "
                    "word of the prompt. Naming the objects (nouns) gives cleaner labels.")),
                io.Float.Input("threshold", default=LABEL_THRESHOLD, min=0.0, max=1.0, step=0.01, tooltip=(
                    "A segment takes a word when the word's attention map, scaled to 0..1, averages above this "
                    "over the segment; otherwise it is background.")),
                io.Image.Input("images", optional=True, tooltip=(
                    "The decoded batch of that run, to draw the segments over the picture (and in the node's "
                    "view: a chip per segment, shift-click to unite).")),
            ],
            outputs=[
                io.Image.Output(display_name="segments", tooltip=(
                    "The picture, its segments in colour, and each segment with its label.")),
                io.Mask.Output(display_name="masks", tooltip=(
                    "One mask per word (in 'words' order), the latent's size.")),
                io.Mask.Output(display_name="mask", tooltip="The union of the words' masks, the latent's size."),
                io.String.Output(display_name="labels", tooltip=(
                    "Each segment's label: '1: cat, 2: background, ...'.")),
            ],
        )

    @classmethod
    def execute(cls, attention, item, segments, words, threshold, images=None) -> io.NodeOutput:
        view = segments_view(attention, images, item, segments, words, threshold)
        preview = ui.PreviewImage(view.image, cls=cls).as_dict()
        shown = preview if view.payload is None else {**preview, "p2p_attention": [view.payload]}
        return io.NodeOutput(view.image, view.masks, view.mask, view.labels, ui=shown)
