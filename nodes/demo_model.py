"""P2PDemoModel: the small model this project trains on its world of coloured shapes."""

from __future__ import annotations

from comfy_api.latest import io

from ..adapter.host_version import require_supported_host
from ..shapes_demo.autoencoder import LATENT_SIZE, PICTURE_SIZE
from ..shapes_demo.model import load
from .sockets import CATEGORY

__all__ = ["P2PDemoModel"]


class P2PDemoModel(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="P2PDemoModel",
            display_name="P2P Demo Model (shapes)",
            category=CATEGORY,
            description=f"A small text-to-image model trained by this project on {PICTURE_SIZE}x{PICTURE_SIZE} "
            "pictures of coloured shapes (see MODEL.md), built from ComfyUI's own classes. Runs in seconds on a "
            "CPU. Its words: circle, square, triangle; red, green, blue, yellow, purple, orange; small, big; on the "
            "left/right, at the top/bottom, in the center; striped; on a white/black/gray background. Use 'Empty "
            f"Latent Image' at {PICTURE_SIZE}x{PICTURE_SIZE} for its latent.",
            inputs=[],
            outputs=[
                io.Model.Output(tooltip="The UNet, on {0}x{0} latents with 4 channels, attention at {0}x{0}, {1}x{1} "
                                "and {2}x{2}.".format(LATENT_SIZE, LATENT_SIZE // 2, LATENT_SIZE // 4)),
                io.Clip.Output(tooltip="Its text encoder, with ComfyUI's SD1 tokenizer."),
                io.Vae.Output(tooltip="Its autoencoder, of ComfyUI's TAESD architecture: "
                              f"{PICTURE_SIZE}x{PICTURE_SIZE} pictures, {LATENT_SIZE}x{LATENT_SIZE} latents."),
            ],
        )

    @classmethod
    def execute(cls) -> io.NodeOutput:
        require_supported_host("P2PDemoModel")
        return io.NodeOutput(*load())
