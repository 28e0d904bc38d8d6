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
WORKFLOWS = sorted((ROOT / "example_workflows").glob("*.json"))


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
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"],
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
