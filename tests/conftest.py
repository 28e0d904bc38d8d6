"""Shared fixtures.

The engine (`p2p`) is imported from the repository root, appended to sys.path so that ComfyUI's own
top-level modules (`nodes`, `utils`, ...) win over this repository's folders of the same name.
Host tests boot the real ComfyUI in-process once per session (`tools.host.start`).
"""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))


@pytest.fixture(scope="session")
def host():
    from tools import host as host_module
    from tools.random_models import RandomControlNetLoader, RandomModelLoader

    h = host_module.start()
    h.register({"RandomModelLoader": RandomModelLoader, "RandomControlNetLoader": RandomControlNetLoader})
    return h


@pytest.fixture(scope="session")
def pack(host):
    """The pack as ComfyUI imported it."""
    from tools import host as host_module

    return host_module.pack_module()


@pytest.fixture(scope="session")
def sd1_clip(host):
    from tools.random_models import build_clip

    return build_clip("sd15")


@pytest.fixture(scope="session")
def tokens_of(pack, sd1_clip):
    """PromptTokens of a prompt, as encoded by ComfyUI's SD1 CLIP tokenizer."""

    def make(text, clip=sd1_clip):
        return pack.adapter.tokenize.prompt_tokens(clip, text, clip.tokenize(text))

    return make


@pytest.fixture(scope="session")
def split_words(pack, sd1_clip):
    return pack.adapter.tokenize.word_splitter(sd1_clip, sd1_clip.tokenize("x"))
