"""Python lines stay within the project's line length (pyproject's [tool.ruff] line-length); no linter is
installed by `make setup`, so this test is what holds it."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("nodes", "p2p", "shapes_demo", "bench", "tools", "tests")


def test_python_lines_fit_the_line_length():
    limit = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["ruff"]["line-length"]
    files = [ROOT / "__init__.py"] + [p for d in PACKAGES for p in sorted((ROOT / d).rglob("*.py"))]
    long = [f"{p.relative_to(ROOT)}:{n}" for p in files
            for n, line in enumerate(p.read_text().splitlines(), 1) if len(line) > limit]
    assert not long, f"lines over {limit} characters: {', '.join(long)}"
