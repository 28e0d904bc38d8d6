"""The oldest ComfyUI the pack runs on, and the check that refuses an older one in one line.

The rule is ComfyUI's version number (`comfyui_version.__version__`) against the range the pack is tested on and
declares (pyproject.toml's requires-comfyui, which the registry and ComfyUI-Manager read too): the pack relies
on more of the host than one feature probe covers (0.3.52 also lacks the demo model's latent format), and a
probe that fails because another pack replaced the attention function would wrongly blame the ComfyUI version.
Only where no version can be read (a ComfyUI without comfyui_version.py, a repackaging with a version string
that is no version) does the one known break decide: before its September 2025 change (PR 9639) ComfyUI's
`optimized_attention` rejects the `transformer_options` keyword that the pack's attention passes on.
"""

from __future__ import annotations

import inspect
import logging
import re

__all__ = ["MINIMUM_COMFYUI", "require_supported_host", "log_if_unsupported"]

MINIMUM_COMFYUI = "0.3.75"

MINIMUM_RELEASE = tuple(int(part) for part in MINIMUM_COMFYUI.split("."))

log = logging.getLogger("prompt_to_prompt")


def release(version: str) -> tuple[int, ...] | None:
    """The numeric release of a version string ("0.3.76-dev" -> (0, 3, 76)), or None if it has none.

    Suffixes are ignored: ComfyUI publishes no pre-releases (its own checkouts between releases report the last
    release), so a suffix marks a packager's build of that release's code.
    """
    match = re.match(r"v?(\d+(?:\.\d+)*)", version.strip())
    return tuple(int(part) for part in match[1].split(".")) if match else None


def is_at_least(found: tuple[int, ...], minimum: tuple[int, ...]) -> bool:
    width = max(len(found), len(minimum))  # 1.0 is 1.0.0
    return found + (0,) * (width - len(found)) >= minimum + (0,) * (width - len(minimum))


def accepts_transformer_options(attention) -> bool:
    """Whether an attention function takes `transformer_options`, looking through decorators (functools.wraps):
    ComfyUI wraps its attention functions in a generic (*args, **kwargs) wrapper."""
    parameters = inspect.signature(attention).parameters.values()
    return any(p.name == "transformer_options" or p.kind is p.VAR_KEYWORD for p in parameters)


def found_version() -> str | None:
    try:
        from comfyui_version import __version__  # ComfyUI's, read at each check
    except ImportError:  # a ComfyUI older than comfyui_version.py, or a repackaging without it
        return None
    return __version__


def unsupported_host() -> str | None:
    """Why this ComfyUI cannot run the pack ("needs ComfyUI 0.3.75 or newer, found 0.3.52"), or None."""
    version = found_version()
    found = release(version) if version else None
    if found is not None:
        supported = is_at_least(found, MINIMUM_RELEASE)
    else:
        from comfy.ldm.modules import attention

        supported = accepts_transformer_options(attention.optimized_attention)
    if supported:
        return None
    shown = version or "a ComfyUI without a version number"
    return f"needs ComfyUI {MINIMUM_COMFYUI} or newer, found {shown}"


def log_if_unsupported() -> None:
    """At load time: one line, so that the log says why the pack's nodes will refuse to run."""
    reason = unsupported_host()
    if reason:
        log.error(f"Prompt-to-Prompt {reason}: its P2P Sampler, P2P Invert and P2P Demo Model nodes will refuse "
                  "to run; update ComfyUI")


def require_supported_host(node: str) -> None:
    """At first use: one error that names the node, instead of a failure deep inside ComfyUI's attention."""
    reason = unsupported_host()
    if reason:
        raise RuntimeError(f"{node}: {reason}; update ComfyUI")
