"""Prompt-to-Prompt image editing for ComfyUI (Hertz et al., ICLR 2023).

ComfyUI loads the nodes through `comfy_entrypoint` (its V3 extension API). The module defines no
NODE_CLASS_MAPPINGS: ComfyUI reads those first and would then ignore the entrypoint.
"""

from .nodes import comfy_entrypoint

WEB_DIRECTORY = "./web"

__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
