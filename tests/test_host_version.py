"""The oldest supported ComfyUI: an older one is named in one line at load time, and the nodes that run models
(P2PSampler, P2PInvert, P2PDemoModel) refuse to run on it with one error that names the node and both versions,
instead of failing deep inside ComfyUI (on 0.3.52: its attention rejects transformer_options, and it has no
ChromaRadiance latent format for the demo model)."""

import functools
import logging
import sys

import pytest
from test_inversion import NULL_TEXT, RenderedScene, demo_graph

from p2p_graphs import p2p_graph
from tools.host import ROOT, HostError

OLD = "0.3.52"  # the last release reported broken: its attention rejects transformer_options


@pytest.fixture
def host_version(pack):
    return pack.adapter.host_version


@pytest.fixture
def comfyui_reports(monkeypatch, host):
    """Make the running ComfyUI report another version string (restored after the test)."""
    import comfyui_version

    def report(version):
        monkeypatch.setattr(comfyui_version, "__version__", version)

    return report


def test_the_minimum_is_the_one_pyproject_declares(host_version):
    tomllib = pytest.importorskip("tomllib")  # Python 3.11 and newer; the pack allows 3.10
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["comfy"]["requires-comfyui"]
    assert declared == f">={host_version.MINIMUM_COMFYUI}"


@pytest.mark.parametrize("version, supported", [
    (OLD, False), ("0.3.74", False), ("0.2.99", False), ("0.3.74+abc", False),
    ("0.3.75", True), ("0.3.75+abc", True), ("0.3.76-dev", True), ("v0.3.80", True), ("0.4.0", True),
    ("1.0.0", True), ("1.0", True),
])
def test_the_version_decides(host_version, comfyui_reports, version, supported):
    comfyui_reports(version)
    reason = host_version.unsupported_host()
    if supported:
        assert reason is None
    else:
        assert reason == f"needs ComfyUI {host_version.MINIMUM_COMFYUI} or newer, found {version}"


def test_the_real_hosts_attention_takes_transformer_options(host_version, host):
    from comfy.ldm.modules import attention

    assert host_version.accepts_transformer_options(attention.optimized_attention)


def test_an_attention_without_transformer_options_is_seen_through_its_decorator(host_version):
    def attention_sub_quad(query, key, value, heads, mask=None, attn_precision=None, skip_reshape=False,
                           skip_output_reshape=False):  # ComfyUI 0.3.52's signature
        return query

    @functools.wraps(attention_sub_quad)
    def wrapped(*args, **kwargs):
        return attention_sub_quad(*args, **kwargs)

    assert not host_version.accepts_transformer_options(wrapped)


@pytest.mark.parametrize("unreadable", ["a version string that is no version", "no comfyui_version module"])
def test_without_a_readable_version_the_attention_decides(host_version, comfyui_reports, monkeypatch, unreadable):
    if unreadable == "no comfyui_version module":
        monkeypatch.setitem(sys.modules, "comfyui_version", None)  # `import comfyui_version` raises ImportError
    else:
        comfyui_reports("nightly")
    assert host_version.unsupported_host() is None  # this host's attention takes transformer_options


@pytest.mark.parametrize("version, lines", [(OLD, 1), ("0.3.75", 0)])
def test_load_time_logs_one_line_only_on_an_old_host(host_version, comfyui_reports, caplog, version, lines):
    comfyui_reports(version)
    with caplog.at_level(logging.INFO, logger="prompt_to_prompt"):
        host_version.log_if_unsupported()
    logged = [r.getMessage() for r in caplog.records]
    assert len(logged) == lines
    if lines:
        assert "\n" not in logged[0]
        assert f"needs ComfyUI {host_version.MINIMUM_COMFYUI} or newer, found {OLD}" in logged[0]


def invert_graph():
    """P2PInvert on the random SD1 model (the demo model's node refuses too, before it)."""
    g, n = p2p_graph()
    image = g.node("P2PTestRenderedScene", "image", x=12.0, size=64)
    g.node("P2PInvert", "invert", model=n["loader"].out(0), vae=n["loader"].out(2), image=image,
           negative=n["negative"], steps=4, cfg=5.0, scheduler="normal", method="direct", **NULL_TEXT,
           clip=n["clip"], source_prompt=n["edit"].inputs["source_prompt"])
    return g


@pytest.mark.parametrize("node, keep, graph", [
    ("P2PSampler", "p2p", lambda: p2p_graph()[0]),
    ("P2PInvert", "invert", invert_graph),
    ("P2PDemoModel", "model", lambda: demo_graph("direct")),  # on 0.3.52 it fails on a missing latent format
])
def test_an_old_host_is_refused_at_execution_naming_the_node(host, host_version, comfyui_reports, node, keep, graph):
    host.register({"P2PTestRenderedScene": RenderedScene})
    comfyui_reports(OLD)
    with pytest.raises(HostError) as info:
        host.run(graph().prompt(), keep=(keep,), fresh=True)  # fresh: a cached output would skip the node
    assert info.value.node_type == node
    assert str(info.value).strip() == (
        f"{node}: needs ComfyUI {host_version.MINIMUM_COMFYUI} or newer, found {OLD}; update ComfyUI")
