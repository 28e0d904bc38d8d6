"""The engine (`p2p/`) is plain PyTorch: it must never import the host."""

import ast
from pathlib import Path

HOST_MODULES = {"comfy", "comfy_api", "comfy_execution", "comfy_extras", "folder_paths", "nodes", "server",
                "execution", "node_helpers", "latent_preview"}
ALLOWED_ROOTS = {"torch", "math", "re", "dataclasses", "typing", "__future__", "contextlib", "functools", "fractions",
                 "unicodedata", "collections"}

ENGINE = Path(__file__).resolve().parents[1] / "p2p"


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            assert node.module is not None  # only a relative import (level > 0) leaves the module out
            roots.add(node.module.split(".")[0])
    return roots


def test_engine_imports_no_host_module():
    files = sorted(ENGINE.glob("*.py"))
    assert files, "no engine modules found"
    for path in files:
        roots = imported_roots(path)
        assert not roots & HOST_MODULES, f"{path.name} imports {roots & HOST_MODULES}"
        assert roots <= ALLOWED_ROOTS, f"{path.name} imports {roots - ALLOWED_ROOTS} (the engine needs only torch)"
