"""nodes/ holds declarations only: each node's execute is short and hands the work to adapter/ (or p2p/), and no
node module imports another (they share only nodes/sockets.py)."""

import ast
from pathlib import Path

import pytest

NODES = Path(__file__).resolve().parents[1] / "nodes"
MAX_EXECUTE_LINES = 30
MODULES = sorted(p for p in NODES.glob("*.py") if p.name != "__init__.py")


@pytest.mark.parametrize("path", MODULES, ids=[p.stem for p in MODULES])
def test_node_modules_are_declarations(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == "execute":
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            assert length <= MAX_EXECUTE_LINES, f"{path.name}:{node.lineno}: execute is {length} lines"
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            assert node.module == "sockets", f"{path.name}: imports .{node.module}, another node module"
