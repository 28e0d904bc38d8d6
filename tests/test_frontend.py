"""The real ComfyUI frontend (comfyui-frontend-package, served by a real server on 127.0.0.1) in headless
Chromium: the example workflows load with every node known, and queueing them produces the prompt that
`tools.workflow.to_api` produces headless.

Needs Debian's chromium (/usr/bin/chromium); .ci/run installs it. Without it these tests are skipped,
unless P2P_REQUIRE_BROWSER=1 (set by CI), where they fail.
"""

import json
import os
import shutil
from pathlib import Path

import pytest

from tools.workflow import to_api

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = os.environ.get("P2P_CHROMIUM", "/usr/bin/chromium")
# the examples, and a workflow saved before the nodes moved to the V3 schema
WORKFLOWS = sorted((ROOT / "example_workflows").glob("*.json")) + [
    ROOT / "tests" / "fixtures" / "saved_before_v3_attention_maps.json"]


def _require_browser():
    if shutil.which(CHROMIUM) is None:
        if os.environ.get("P2P_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{CHROMIUM} is missing (apt-get install chromium)")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium); browser tests skipped")


@pytest.fixture(scope="module")
def server():
    _require_browser()
    from tools.server import running_server

    ARTIFACTS.mkdir(exist_ok=True)
    with running_server(log_path=ARTIFACTS / "server.log") as (url, base):
        yield url, base


@pytest.fixture(scope="module")
def page(server):
    from playwright.sync_api import sync_playwright

    url, _ = server
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"],
        )
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.goto(url)
        page.wait_for_function("window.app?.graph && window.app.vueAppReady", timeout=90_000)
        yield page
        browser.close()


def load(page, workflow: dict) -> None:
    page.evaluate("async (wf) => { await window.app.loadGraphData(wf); }", workflow)


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_example_workflow_loads_and_queues_as_headless(page, host, path):
    workflow = json.loads(path.read_text())
    load(page, workflow)
    unknown = page.evaluate(
        "(types) => types.filter(t => !window.LiteGraph.registered_node_types[t])",
        sorted({n["type"] for n in workflow["nodes"]}),
    )
    assert unknown == []
    loaded = page.evaluate("() => window.app.graph.nodes.map(n => n.type)")
    assert sorted(loaded) == sorted(n["type"] for n in workflow["nodes"])
    page.screenshot(path=str(ARTIFACTS / f"{path.stem}.png"))
    queued = page.evaluate("async () => (await window.app.graphToPrompt()).output")
    expected = to_api(workflow, host.nodes.NODE_CLASS_MAPPINGS)
    assert {k: (v["class_type"], v["inputs"]) for k, v in queued.items()} == {
        k: (v["class_type"], v["inputs"]) for k, v in expected.items()
    }


HEATMAP_WORKFLOW = ROOT / "example_workflows" / "p2p_demo_attention_maps.json"
VIEW = "window.app.graph.nodes.find(n => n.type === 'P2PAttentionMaps')"


def _canvas_pixels(page) -> list[int]:
    return page.evaluate(f"""() => {{
        const c = {VIEW}.p2pAttentionView.canvas;
        return Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data);
    }}""")


def _wait_for_draw(page, after: int) -> int:
    page.wait_for_function(f"() => ({VIEW}?.p2pAttentionView?.draws ?? 0) > {after}", timeout=180_000)
    return page.evaluate(f"() => {VIEW}.p2pAttentionView.draws")


def _click(page, selector: str) -> None:
    page.locator(f".p2p-attention {selector}").first.click()


@pytest.mark.parametrize("renderer", ["classic", "nodes2"])
def test_heatmaps_are_drawn_inside_the_node_and_follow_the_controls(page, renderer):
    page.evaluate("async (on) => { await window.app.ui.settings.setSettingValueAsync('Comfy.VueNodes.Enabled', on); }",
                  renderer == "nodes2")
    load(page, json.loads(HEATMAP_WORKFLOW.read_text()))
    # bring the node into view so the controls can be clicked like a user would
    page.evaluate(f"""() => {{
        const n = {VIEW}, ds = window.app.canvas.ds;
        ds.scale = 1; ds.offset[0] = 120 - n.pos[0]; ds.offset[1] = 140 - n.pos[1];
        window.app.canvas.setDirty(true, true);
    }}""")
    assert page.evaluate(f"() => {VIEW}.p2pAttentionView.draws") == 0
    page.evaluate("async () => { await window.app.queuePrompt(0, 1); }")
    draws = _wait_for_draw(page, 0)
    page.wait_for_timeout(300)
    page.screenshot(path=str(ARTIFACTS / f"heatmaps_{renderer}_first.png"))

    first = _canvas_pixels(page)
    assert len(set(first)) > 20, "the heatmap canvas is blank"
    state = page.evaluate(f"() => ({{...{VIEW}.p2pAttentionView.canvas.dataset}})")
    assert state["item"] == "1" and state["words"] == "yellow"  # the workflow shows edit 1; first content word

    _click(page, "[data-word='square']")
    draws = _wait_for_draw(page, draws)
    second = _canvas_pixels(page)
    assert page.evaluate(f"() => {VIEW}.p2pAttentionView.canvas.dataset.words") == "square"
    assert second != first, "choosing another word did not change the heatmap"
    page.screenshot(path=str(ARTIFACTS / f"heatmaps_{renderer}_square.png"))

    _click(page, "[data-item='0']")  # the source/edit switch
    draws = _wait_for_draw(page, draws)
    assert page.evaluate(f"() => {VIEW}.p2pAttentionView.canvas.dataset.item") == "0"
    source_view = _canvas_pixels(page)
    assert source_view != second

    # the colour map is the one the node sends with its maps, not a copy in the script
    page.evaluate(f"""() => {{
        const view = {VIEW}.p2pAttentionView;
        view.data = {{...view.data, colour_map: [[0, 0, 255, 0], [1, 0, 255, 0]]}};
        view.draw();
    }}""")
    assert _canvas_pixels(page) != source_view, "the view ignores the colour map sent with the maps"

    page.locator(".p2p-attention .p2p-opacity").first.fill("0")
    _wait_for_draw(page, draws)
    assert _canvas_pixels(page) != source_view

    # the view is not part of the saved workflow or of the queued prompt, and no other node has it
    saved = page.evaluate("() => window.app.graph.serialize().nodes.find(n => n.type === 'P2PAttentionMaps')")
    assert len(saved["widgets_values"]) == 3  # item, components, words
    queued = page.evaluate("async () => (await window.app.graphToPrompt()).output")
    (maps_inputs,) = [n["inputs"] for n in queued.values() if n["class_type"] == "P2PAttentionMaps"]
    assert set(maps_inputs) == {"attention", "images", "item", "components", "words"}
    others = page.evaluate("() => window.app.graph.nodes.filter(n => n.type !== 'P2PAttentionMaps' && "
                           "(n.p2pAttentionView || "
                           "(n.widgets || []).some(w => w.name === 'p2p_attention_view'))).length")
    assert others == 0


SEGMENTS_WORKFLOW = ROOT / "example_workflows" / "p2p_demo_attention_segments.json"
SEGMENTS_VIEW = "window.app.graph.nodes.find(n => n.type === 'P2PAttentionSegments')"


def test_segments_are_shown_in_the_node_view_a_chip_per_segment(page):
    load(page, json.loads(SEGMENTS_WORKFLOW.read_text()))
    assert page.evaluate(f"() => {SEGMENTS_VIEW}.p2pAttentionView.draws") == 0
    page.evaluate("async () => { await window.app.queuePrompt(0, 1); }")
    page.wait_for_function(f"() => ({SEGMENTS_VIEW}?.p2pAttentionView?.draws ?? 0) > 0", timeout=180_000)
    chips = page.evaluate(f"() => {SEGMENTS_VIEW}.p2pAttentionView.data.items[0].words")
    assert len(chips) == 5 and [c.split(": ")[0] for c in chips] == ["1", "2", "3", "4", "5"]
    assert page.evaluate(f"() => {SEGMENTS_VIEW}.p2pAttentionView.canvas.dataset.words") == chips[0]
    pixels = page.evaluate(f"""() => {{
        const c = {SEGMENTS_VIEW}.p2pAttentionView.canvas;
        return Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data);
    }}""")
    assert len(set(pixels)) > 20, "the segments view is blank"
    page.screenshot(path=str(ARTIFACTS / "segments_view.png"))


DOC_PAGES = sorted((ROOT / "web" / "docs").glob("*.md"))


@pytest.mark.parametrize("path", DOC_PAGES, ids=[p.stem for p in DOC_PAGES])
def test_the_server_serves_each_node_help_page_where_the_frontend_looks(server, path):
    """The frontend's node-help panel fetches /extensions/<pack folder>/docs/<node id>.md for a custom node, with
    the pack folder taken from the node's python_module."""
    import urllib.request

    url, _ = server
    with urllib.request.urlopen(f"{url}/object_info/{path.stem}") as r:
        module = json.load(r)[path.stem]["python_module"]
    assert module.startswith("custom_nodes.")
    folder = module.split(".")[1]
    with urllib.request.urlopen(f"{url}/extensions/{folder}/docs/{path.name}") as r:
        assert r.read().decode() == path.read_text()
