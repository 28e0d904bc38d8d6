"""The per-node help pages in web/docs/ (ComfyUI's frontend shows `/extensions/<pack>/docs/<NodeId>.md` in its node
help panel), written from the node schemas so that they never disagree with the tooltips and defaults.

    .venv/bin/python -m tools.node_docs      # rewrite web/docs/*.md
"""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["DOCS", "render", "format_default", "write"]

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "web" / "docs"


def format_default(value) -> str:
    """A default as the README and the help pages show it."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return re.sub(r"e([+-])0*(\d)", r"e\1\2", f"{value:g}").replace("e+", "e")  # 1e-05 -> 1e-5
    if value == "":
        return "empty"
    if isinstance(value, str) and "\n" in value:  # a multiline default: its lines, one after the other
        return " / ".join(f"`{line}`" for line in value.splitlines())
    return f"`{value}`" if isinstance(value, str) else str(value)


def _cell(text: str | None) -> str:
    return (text or "").replace("|", "\\|").replace("\n", " ")


def render(node_class) -> str:
    schema = node_class.GET_SCHEMA()
    lines = [f"# {schema.display_name}", "", f"`{schema.node_id}`: {schema.description}", "", "## Inputs", "",
             "| input | type | default | what it does |", "|---|---|---|---|"]
    for item in schema.inputs or []:
        name = f"`{item.id}`" + (" (optional)" if item.optional else "")
        default = format_default(getattr(item, "default", None))
        options = getattr(item, "options", None)
        tooltip = item.tooltip or ""
        # fixed choices (a combo with a default) are listed; a list of files (no default) changes with the folder
        if options and len(options) <= 8 and getattr(item, "default", None) is not None:
            tooltip += f" Options: {', '.join(f'`{o}`' for o in options)}."
        lines.append(f"| {name} | {item.io_type} | {default} | {_cell(tooltip)} |")
    if schema.outputs:
        lines += ["", "## Outputs", "", "| output | type | what it is |", "|---|---|---|"]
        for item in schema.outputs:
            lines.append(f"| `{item.display_name or item.io_type}` | {item.io_type} | {_cell(item.tooltip)} |")
    return "\n".join(lines) + "\n"


def write(nodes) -> list[Path]:
    DOCS.mkdir(parents=True, exist_ok=True)
    paths = []
    for node in nodes:
        path = DOCS / f"{node.GET_SCHEMA().node_id}.md"
        path.write_text(render(node))
        paths.append(path)
    return paths


def main() -> None:
    from tools import host

    host.start()
    for path in write(host.pack_module().nodes.NODES):
        print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
