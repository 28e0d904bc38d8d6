"""A real ComfyUI server on 127.0.0.1 with this pack installed, in an isolated base directory.

Used by the browser tests. The server is started as a separate process exactly as `make serve` starts it,
with its own custom_nodes folder (a link to this repository), user settings and output folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from .host import PACK_FOLDER, ROOT, comfyui_path

__all__ = ["running_server", "free_port"]

SETTINGS = {
    "Comfy.TutorialCompleted": True,  # otherwise the template browser covers the canvas on a fresh user
    "Comfy.Validation.Workflows": True,
    "Comfy.Workflow.ShowMissingModelsWarning": False,  # the example checkpoints are not on a test machine
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(settings: dict | None = None, timeout: float = 120.0, log_path: Path | None = None):
    """Yields (base URL, base directory) of a ComfyUI server; stops it afterwards."""
    base = Path(tempfile.mkdtemp(prefix="p2p-server-"))
    (base / "custom_nodes").mkdir()
    os.symlink(ROOT, base / "custom_nodes" / PACK_FOLDER)
    user = base / "user" / "default"
    user.mkdir(parents=True)
    (user / "comfy.settings.json").write_text(json.dumps({**SETTINGS, **(settings or {})}))
    port = free_port()
    log = open(log_path or base / "server.log", "w")  # noqa: SIM115 (the server writes to it until it stops)
    process = subprocess.Popen(
        [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
         "--base-directory", str(base), "--disable-metadata"],
        cwd=comfyui_path(), stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {process.returncode}; see {log.name}")
            try:
                with urllib.request.urlopen(url + "/object_info/P2PSampler", timeout=5) as r:
                    if json.load(r).get("P2PSampler"):
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"ComfyUI did not answer within {timeout:.0f} s; see {log.name}")
            time.sleep(0.5)
        yield url, base
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()
