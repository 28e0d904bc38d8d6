"""P2PDemoModel: the small model this project trains on its world of coloured shapes."""

from __future__ import annotations

from comfy_api.latest import io

from ..adapter.host_version import require_supported_host
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
            description="A small text-to-image model trained by this project on 64x64 pictures of coloured shapes "
            "(see MODEL.md), built from ComfyUI's own classes. Runs in seconds on a CPU. Its words: circle, square, "
            "triangle; red, green, blue, yellow, purple, orange; small, big; on the left/right, at the top/bottom, "
            "in the center; striped; on a white/black/gray background. Use 'Empty Latent Image' at 64x64 for its "
            "latent.",
            inputs=[],
            outputs=[
                io.Model.Output(tooltip="The UNet, on 8x8 latents with 4 channels, attention at 8x8, 4x4 and 2x2."),
                io.Clip.Output(tooltip="Its text encoder, with ComfyUI's SD1 tokenizer."),
                io.Vae.Output(tooltip="Its autoencoder, of ComfyUI's TAESD architecture: 64x64 pictures, 8x8 latents."),
            ],
        )

    @classmethod
    def execute(cls) -> io.NodeOutput:
        require_supported_host("P2PDemoModel")
        return io.NodeOutput(*load())
