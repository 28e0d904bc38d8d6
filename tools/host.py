"""Run the real ComfyUI in-process: its node loader, its validator and its executor, without a web server.

Used by the tests and by `make demo`. ComfyUI is a process-wide singleton (its node registry, model
management and argument parsing are module globals), so `start()` boots it once per process.

The pack is loaded exactly as a user's ComfyUI loads it: from a `custom_nodes` folder (of an isolated
`--base-directory`) that holds a link to this repository.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import sys
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACK_FOLDER = "prompt_to_prompt"


def comfyui_path() -> Path:
    path = Path(os.environ.get("COMFYUI_PATH") or ROOT / ".host" / "ComfyUI").resolve()
    if not (path / "main.py").is_file():
        raise RuntimeError(f"no ComfyUI at {path}; run `make setup` or set COMFYUI_PATH")
    return path


class HostError(RuntimeError):
    """A prompt that failed validation or execution; the message is ComfyUI's."""

    def __init__(self, message: str, node_type: str | None = None, details: dict | None = None):
        super().__init__(message)
        self.node_type = node_type
        self.details = details or {}


@dataclass
class Messages:
    """What the executor would have sent to a browser: (event, data) in order."""

    events: list = field(default_factory=list)
    client_id: str | None = None
    last_node_id: str | None = None
    last_prompt_id: str | None = None
    sockets_metadata: dict = field(default_factory=dict)

    def send_sync(self, event, data, sid=None):
        self.events.append((event, data))

    def queue_updated(self):
        pass

    def of(self, event: str) -> list:
        return [d for e, d in self.events if e == event]


class Keep:
    """Sink node that makes the harness execute nodes that are not output nodes."""

    NAME = "P2PHarnessKeep"
    OUTPUT_NODE = True
    RETURN_TYPES = ()
    FUNCTION = "keep"
    CATEGORY = "prompt_to_prompt/dev"

    @classmethod
    def INPUT_TYPES(cls):
        return {"optional": {f"in{i}": ("*",) for i in range(8)}}

    @classmethod
    def VALIDATE_INPUTS(cls, input_types):
        return True

    def keep(self, **_):
        return ()


class Host:
    def __init__(self, base_dir: Path):
        import comfy.utils
        import execution
        import nodes

        self.base_dir = base_dir
        self.nodes = nodes
        self.execution = execution
        self.server = Messages()
        self.executor = execution.PromptExecutor(
            self.server, cache_type=execution.CacheType.CLASSIC, cache_args={"lru": 0, "ram": 0}
        )
        comfy.utils.set_progress_bar_global_hook(self._progress)
        self.register({Keep.NAME: Keep})

    def _progress(self, value, total, preview_image, prompt_id=None, node_id=None):
        import comfy.model_management
        from comfy_execution.progress import get_progress_state
        from comfy_execution.utils import get_executing_context

        context = get_executing_context()
        if node_id is None and context is not None:
            node_id = context.node_id
        comfy.model_management.throw_exception_if_processing_interrupted()
        # node_id is None outside a node's execution; ComfyUI's own hook (main.py, hijack_progress) passes None
        # here too, so update_progress's `str` annotation is narrower than ComfyUI's use of it
        get_progress_state().update_progress(node_id, value, total, preview_image)  # ty: ignore[invalid-argument-type]
        self.server.send_sync("progress", {"value": value, "max": total, "node": node_id})

    def register(self, mappings: dict) -> None:
        """Add node classes (test fixtures) to the host's registry."""
        self.nodes.NODE_CLASS_MAPPINGS.update(mappings)

    def node_class(self, name: str):
        return self.nodes.NODE_CLASS_MAPPINGS[name]

    def run(self, prompt: dict, keep: tuple[str, ...] = (), fresh: bool = False) -> dict:
        """Validate and execute an API-format prompt; return {node id: outputs tuple}.

        `keep` names nodes that are not output nodes but must run (a sink node is added for them).
        `fresh` empties ComfyUI's output cache first, so every node runs again.
        """
        if fresh:
            self.executor.reset()
        prompt_id = str(uuid.uuid4())
        if keep:
            prompt = dict(prompt)
            prompt["__keep__"] = {"class_type": Keep.NAME, "inputs": {f"in{i}": [n, 0] for i, n in enumerate(keep)}}
        valid, error, to_execute, node_errors = asyncio.run(self.execution.validate_prompt(prompt_id, prompt, None))
        if not valid:
            details = "; ".join(
                f"{nid} ({v.get('class_type')}): " + ", ".join(
                    f"{e.get('message')} {e.get('details', '')}".strip() for e in v.get("errors", [])
                )
                for nid, v in (node_errors or {}).items()
            )
            message = f"{error.get('message')}: {error.get('details', '')} {details}".strip()
            raise HostError(message, details=node_errors)
        self.server.events.clear()
        self.executor.execute(prompt, prompt_id, {"client_id": "harness"}, to_execute)
        if not self.executor.success:
            failures = self.server.of("execution_error") + self.server.of("execution_interrupted")
            failure = failures[-1] if failures else {}
            raise HostError(
                failure.get("exception_message", "execution failed"), failure.get("node_type"), failure
            )
        results = {}
        for node_id in prompt:
            if node_id == "__keep__":
                continue
            entry = self.executor.caches.outputs.get(node_id)
            if entry is not None:
                results[node_id] = tuple(o[0] if len(o) == 1 else o for o in entry.outputs)
        return results

    def interrupt(self) -> None:
        self.nodes.interrupt_processing(True)


class MissingTorchaudioFilter(logging.Filter):
    """Leaves out ComfyUI's reports that torchaudio is missing: this project does not install it (it runs no audio
    model), and a newcomer would read them as the demo failing. They are: the audio models' warnings, the
    tracebacks of the comfy_extras files that need it, and their lines in ComfyUI's closing report of extras that
    did not import (all of that report when nothing else failed). Every other record passes, other import
    failures, their report and a custom node's torchaudio failure included.
    """

    MISSING = "No module named 'torchaudio'"
    REPORT = ("WARNING: some comfy_extras/ nodes did not import correctly", "\nThis issue might be caused by",
              "Please do a: pip install -r requirements.txt", "Please run the update script")

    def __init__(self):
        super().__init__()
        self.needs_torchaudio: set[str] = set()  # extras files that did not import for want of torchaudio
        self.other_failures = False

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith("torchaudio missing, "):
            return False
        if message.startswith("IMPORT FAILED: "):
            return message.removeprefix("IMPORT FAILED: ") not in self.needs_torchaudio
        if message.startswith(self.REPORT) or message == "":
            return not self.needs_torchaudio or self.other_failures
        extras_failure = re.match(r"Cannot import (.*comfy_extras\W.*) module for custom nodes: (.*)", message)
        if extras_failure:
            if extras_failure[2] != self.MISSING:
                self.other_failures = True
                return True
            self.needs_torchaudio.add(Path(extras_failure[1]).name)
            return False
        return not ("comfy_extras" in message and message.rstrip().endswith(self.MISSING))  # the traceback


def import_comfy(extra_args: tuple[str, ...] = ()) -> Path:
    """Make ComfyUI's modules importable (CPU, an isolated base directory with this pack); no nodes loaded.

    ComfyUI parses its command line once per process, so a second call must ask for the same arguments.
    """
    booted = _booted.get("args")
    if booted is not None:
        if booted != extra_args:
            raise RuntimeError(f"ComfyUI was already started in this process with {booted}, not {extra_args}")
        return _booted["base_dir"]
    comfy_root = comfyui_path()
    base_dir = Path(tempfile.mkdtemp(prefix="p2p-host-"))
    (base_dir / "custom_nodes").mkdir()
    os.symlink(ROOT, base_dir / "custom_nodes" / PACK_FOLDER)
    sys.argv = [sys.argv[0], "--cpu", "--base-directory", str(base_dir), "--disable-metadata", *extra_args]
    logging.getLogger().addFilter(MissingTorchaudioFilter())  # ComfyUI reports through the root logger
    sys.path.insert(0, str(comfy_root))

    import comfy.options

    comfy.options.enable_args_parsing()
    import utils.extra_config  # noqa: F401  (ComfyUI's `utils` package, before nodes.py puts comfy/ first on sys.path)

    _booted.update(args=extra_args, base_dir=base_dir)
    return base_dir


_booted: dict = {}  # the process's one ComfyUI boot (ComfyUI itself is process-global)


def start(extra_args: tuple[str, ...] = ()) -> Host:
    """Boot ComfyUI (CPU) in this process with this pack installed, once; later calls return the same host."""
    base_dir = import_comfy(extra_args)
    if "host" in _booted:
        return _booted["host"]
    import nodes

    missing = asyncio.run(nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False))
    del missing
    if "P2PSampler" not in nodes.NODE_CLASS_MAPPINGS:
        raise RuntimeError("the prompt_to_prompt pack did not load; see the log above")
    _booted["host"] = Host(base_dir)
    return _booted["host"]


def pack_module():
    """The pack as ComfyUI imported it (its engine classes are the ones the nodes use)."""
    for name, module in sys.modules.items():
        if name.endswith(PACK_FOLDER) and hasattr(module, "comfy_entrypoint"):
            return module
    raise RuntimeError("the pack is not loaded")
