"""Shared self-attention nodes: P2PStyleAligned (a MODEL patch), P2PPromptBatch (one prompt per batch item) and
P2PAppearanceTransfer (cross-image attention between two inverted pictures)."""

from __future__ import annotations

from comfy_api.latest import io

from ..adapter.appearance import NODE as TRANSFER_NODE
from ..adapter.appearance import transfer
from ..adapter.conditioning import prompt_batch
from ..adapter.errors import input_error, node_input
from ..adapter.inversion import check_inversion_model, deterministic_samplers
from ..adapter.sampling import intermediate
from ..adapter.style_aligned import NODE, ReferencePin, install_style_aligned, parse_spec
from ..p2p import ADAIN_MODES, LAYER_GROUPS, P2PError, SharedAttentionSpec, parse_items
from ..p2p.cross_image import AppearanceSpec
from ..p2p.spec import REGION_THRESHOLD
from .sockets import CATEGORY, Inversion

__all__ = ["P2PStyleAligned", "P2PPromptBatch", "P2PAppearanceTransfer"]

DEFAULTS = SharedAttentionSpec()
TRANSFER = AppearanceSpec()


class P2PStyleAligned(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=NODE,
            display_name="P2P Style Aligned",
            category=CATEGORY,
            description="StyleAligned (Hertz et al., CVPR 2024): every picture of a batch takes the style of the "
            "first one. Each item's self-attention also attends to item 0's keys and values, after matching its "
            "queries and keys to item 0's statistics (AdaIN). Item 0 itself is unchanged. Works with KSampler, "
            "custom sampling and P2P Sampler (there the source is the reference); give each item its own prompt "
            "with P2P Prompt Batch.",
            inputs=[
                io.Model.Input("model", tooltip="An SD1.x, SD2.x or SDXL model (LoRAs and other patches are kept)."),
                io.Combo.Input("layers", options=list(LAYER_GROUPS), default=DEFAULTS.layers, tooltip=(
                    "Which UNet blocks' self-attention layers share (down = input blocks, up = output blocks). "
                    "all: every layer, as the paper does.")),
                io.Combo.Input("adain", options=list(ADAIN_MODES), default=DEFAULTS.adain, tooltip=(
                    "Which of each item's queries, keys and values get item 0's per-channel mean and spread before "
                    "attending (AdaIN). The paper's default is queries+keys; off shares attention only.")),
                io.Float.Input("key_scale", default=DEFAULTS.key_scale, min=0.0, max=3.0, step=0.01, tooltip=(
                    "Multiplies item 0's keys (the paper's shared_score_scale): below 1 softens the attention to "
                    "the reference, above 1 sharpens it. 0.5 is the paper's setting for very famous reference "
                    "images.")),
                io.Float.Input("reference_weight", default=DEFAULTS.reference_weight, min=0.0, max=10.0, step=0.05,
                               tooltip=(
                    "Multiplies item 0's share of each item's attention (e to the paper's shared_score_shift): "
                    "2 follows the reference more closely (the paper's setting for a given reference picture), "
                    "0 attends to it not at all (AdaIN only).")),
                io.String.Input("share_items", default="", tooltip=(
                    "Which batch items take the style, counted from 0 (item 0 is the reference): '1, 3-5'. "
                    "Empty: every item but 0.")),
                Inversion.Input("reference_inversion", optional=True, tooltip=(
                    "From P2P Invert: a real picture as the reference. Item 0 follows its inverted path (and comes "
                    "out as its reconstruction); the other items take its style. Same latent size as the batch.")),
                io.Latent.Input("reference_latent", optional=True, tooltip=(
                    "A latent (e.g. VAE Encode of a picture) as the reference: item 0 is that latent noised to each "
                    "step's level with fixed noise. Weaker than an inversion; one latent, the batch's size.")),
            ],
            outputs=[io.Model.Output(display_name="model", tooltip=(
                "The model with shared self-attention; sample a batch of several latents with it."))],
        )

    @classmethod
    def execute(cls, model, layers, adain, key_scale, reference_weight, share_items, reference_inversion=None,
                reference_latent=None) -> io.NodeOutput:
        with node_input(NODE, "share_items"):
            items = parse_items(share_items)
        spec = parse_spec(layers, adain, key_scale, reference_weight, items)
        if reference_inversion is not None and reference_latent is not None:
            raise input_error(NODE, "reference_latent", "connect a reference_inversion or a reference_latent, not "
                              "both")
        pin = None
        if reference_inversion is not None:
            check_inversion_model(NODE, "reference_inversion", reference_inversion, model)
            pin = ReferencePin(inversion=reference_inversion.inversion, input_name="reference_inversion")
        elif reference_latent is not None:
            samples = reference_latent["samples"]
            if samples.is_nested or samples.ndim != 4 or samples.shape[0] != 1:
                raise input_error(NODE, "reference_latent", f"needs one latent (a batch of 1), got "
                                  f"{samples.shape[0] if not samples.is_nested else 'a nested'} batch")
            channels = model.model.latent_format.latent_channels
            if samples.shape[1] != channels:
                raise input_error(NODE, "reference_latent", f"has {samples.shape[1]} channels; this model's "
                                  f"latents have {channels} (encode the picture with this model's VAE)")
            pin = ReferencePin(latent=samples[0], input_name="reference_latent")
        return io.NodeOutput(install_style_aligned(model, spec, pin))


class P2PPromptBatch(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="P2PPromptBatch",
            display_name="P2P Prompt Batch",
            category=CATEGORY,
            description="One prompt per line, encoded as one conditioning with a row per prompt: item i of the "
            "latent batch gets line i (the last line repeats if the batch is longer). For P2P Style Aligned, where "
            "every item draws its own subject in the style of item 0.",
            inputs=[
                io.Clip.Input("clip", tooltip="The text encoder of the model you sample with."),
                io.String.Input("prompts", multiline=True,
                                default="a watercolor painting of a house\na watercolor painting of a cat\n"
                                        "a watercolor painting of a bicycle\na watercolor painting of a tree",
                                tooltip="One prompt per line; empty lines are skipped."),
            ],
            outputs=[io.Conditioning.Output(display_name="conditioning", tooltip=(
                "Connect to the sampler's positive input; make the latent batch as long as the prompts."))],
        )

    @classmethod
    def execute(cls, clip, prompts) -> io.NodeOutput:
        lines = [line.strip() for line in prompts.splitlines() if line.strip()]
        if not lines:
            raise input_error("P2PPromptBatch", "prompts", "is empty: write one prompt per line")
        return io.NodeOutput(prompt_batch(clip, lines))


def _fraction(name: str, default: float, tooltip: str) -> io.Float.Input:
    return io.Float.Input(name, default=default, min=0.0, max=1.0, step=0.01, tooltip=tooltip)


class P2PAppearanceTransfer(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=TRANSFER_NODE,
            display_name="P2P Appearance Transfer",
            category=CATEGORY,
            description="Cross-image attention (Alaluf et al., SIGGRAPH 2024): a picture with the layout of the "
            "structure picture and the look of the appearance picture (two pictures of the same kind of object, "
            "both inverted with P2P Invert). The output starts from the structure's inverted noise; in the "
            "decoder's self-attention its queries take the appearance picture's keys and values. Sampled with "
            "the structure inversion's schedule and guidance.",
            inputs=[
                io.Model.Input("model", tooltip="The model both pictures were inverted with (SD1.x, SD2.x, SDXL)."),
                Inversion.Input("structure", tooltip="P2P Invert of the picture whose layout the output keeps."),
                Inversion.Input("appearance", tooltip=(
                    "P2P Invert of the picture whose colours and textures the output takes (same size, steps "
                    "and scheduler as the structure's).")),
                io.Conditioning.Input("positive", tooltip=(
                    "The prompt to sample with: a plain description of the object both pictures show ('a photo "
                    "of a cat'), as the paper does; the inversions' prompt works well.")),
                io.Conditioning.Input("negative", tooltip="The negative prompt (usually empty)."),
                io.Combo.Input("sampler_name", options=deterministic_samplers(), default="euler", tooltip=(
                    "A deterministic sampler, so the two pictures retrace their inversions.")),
                _fraction("start", TRANSFER.start, (
                    "Fraction of the steps after which the output takes the appearance's keys and values.")),
                _fraction("end", TRANSFER.end, (
                    "Fraction of the steps after which the swap stops, in the layers at the latent's size.")),
                _fraction("end_half", TRANSFER.end_half, (
                    "The same for the layers at half of the latent's size (the paper stops them earlier).")),
                io.Float.Input("contrast", default=TRANSFER.contrast, min=1.0, max=5.0, step=0.01, tooltip=(
                    "Sharpens the output's attention to the appearance picture: weak matches drop, strong ones "
                    "grow. 1: plain attention.")),
                _fraction("adain_start", TRANSFER.adain_start, (
                    "Fraction of the steps from which the output latent takes the appearance latent's channel "
                    "mean and spread (AdaIN), which carries the overall colour. 1: never.")),
                io.Float.Input("swap_guidance", default=TRANSFER.swap_guidance, min=1.0, max=10.0, step=0.05,
                               tooltip=(
                    "Pushes the output further from what it would be without the swap, as CFG pushes from the empty "
                    "prompt (the paper's 3.5, easing to half of it over the steps). Each swap step then evaluates "
                    "the model twice. 1: off.")),
                io.Mask.Input("structure_mask", optional=True, tooltip=(
                    "The object in the structure picture (any size, scaled to the latent: a cell is in where the "
                    f"mask averages above {REGION_THRESHOLD:g}). With appearance_mask, AdaIN is masked as in the "
                    "paper: only the object takes the appearance object's channel mean and spread, the background "
                    "keeps its own.")),
                io.Mask.Input("appearance_mask", optional=True, tooltip=(
                    "The object in the appearance picture, for masked AdaIN with structure_mask (give both or "
                    "neither). Any mask node's output, or a mask painted on the picture.")),
            ],
            outputs=[
                io.Latent.Output(display_name="latent", tooltip="The output."),
                io.Latent.Output(display_name="pictures", tooltip=(
                    "The output, the structure and the appearance as this run retraced them (a batch of 3).")),
            ],
        )

    @classmethod
    def execute(cls, model, structure, appearance, positive, negative, sampler_name, start, end, end_half,
                contrast, adain_start, swap_guidance=TRANSFER.swap_guidance, structure_mask=None,
                appearance_mask=None) -> io.NodeOutput:
        try:
            spec = AppearanceSpec(start=start, end=end, end_half=end_half, contrast=contrast, adain_start=adain_start,
                                  swap_guidance=swap_guidance)
        except P2PError as e:
            name, _, reason = str(e).partition(": ")
            raise input_error(TRANSFER_NODE, name, reason) from None
        samples = intermediate(transfer(model, structure, appearance, positive, negative, sampler_name, spec,
                                        structure_mask, appearance_mask))
        return io.NodeOutput({"samples": samples[:1]}, {"samples": samples})
