"""`make demo`'s console: ComfyUI's reports that torchaudio is missing (this project does not install it: it runs
no audio model) are left out, so that a newcomer sees no traceback; ComfyUI's real errors still show."""

import json
import logging
import subprocess
import sys

import pytest

from tools.demo import WORKFLOW
from tools.host import ROOT, MissingTorchaudioFilter

EXTRAS = "/ComfyUI/comfy_extras"
MISSING = "No module named 'torchaudio'"


def run_demo(out_dir, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tools.demo", "--out", str(out_dir), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


def test_the_demo_console_has_no_traceback(tmp_path):
    result = run_demo(tmp_path)
    console = result.stdout + result.stderr
    assert result.returncode == 0, console
    assert "Traceback" not in console and "torchaudio" not in console, console
    assert (tmp_path / "comparison.png").is_file()


def test_a_failing_workflow_still_shows_comfyuis_error(tmp_path):
    """A swap whose target has more words than its source: ComfyUI's executor logs P2PEditSpec's error."""
    workflow = json.loads(WORKFLOW.read_text())
    edit = next(n for n in workflow["nodes"] if n["type"] == "P2PEditSpec")
    edit["widgets_values"][1:3] = ["a yellow circle with stripes and a small blue square", "replace"]
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(workflow))
    result = run_demo(tmp_path, "--workflow", str(broken))
    console = result.stdout + result.stderr
    assert result.returncode != 0
    assert "!!! Exception during processing !!! P2PEditSpec: input 'target_prompt'" in console, console
    assert "torchaudio" not in console, console


def record(message: str) -> logging.LogRecord:
    return logging.LogRecord("root", logging.WARNING, __file__, 0, message, None, None)


def kept(messages: list[str]) -> list[str]:
    """The messages that pass one filter, logged in this order (the filter follows ComfyUI's import report)."""
    quiet = MissingTorchaudioFilter()
    return [m for m in messages if quiet.filter(record(m))]


def import_failure(file: str, error: str) -> list[str]:
    """What ComfyUI's load_custom_node logs for an extras file that does not import."""
    return [f'Traceback (most recent call last):\n  File "{EXTRAS}/{file}", line 4, in <module>\n'
            f"ModuleNotFoundError: {error}\n",
            f"Cannot import {EXTRAS}/{file} module for custom nodes: {error}"]


def summary(files: list[str]) -> list[str]:
    """ComfyUI's closing report of the extras files that did not import."""
    return ["WARNING: some comfy_extras/ nodes did not import correctly. This may be because they are missing some "
            "dependencies.\n", *[f"IMPORT FAILED: {f}" for f in files],
            "\nThis issue might be caused by new missing dependencies added the last time you updated ComfyUI.",
            "Please do a: pip install -r requirements.txt", ""]


def test_only_torchaudio_failures_leave_nothing():
    audio = ["torchaudio missing, ACE model will be broken", *import_failure("nodes_audio.py", MISSING),
             *summary(["nodes_audio.py"])]
    assert kept(audio) == []


@pytest.mark.parametrize("error", ["No module named 'av'", "name 'x' is not defined"])
def test_another_import_failure_keeps_its_traceback_and_the_summary(error):
    other = import_failure("nodes_video.py", error)
    messages = [*import_failure("nodes_audio.py", MISSING), *other, *summary(["nodes_audio.py", "nodes_video.py"])]
    assert kept(messages) == [*other, *summary(["nodes_video.py"])]


def test_a_custom_nodes_torchaudio_failure_is_kept():
    pack = f"Cannot import /base/custom_nodes/some_pack module for custom nodes: {MISSING}"
    assert kept([pack]) == [pack]
