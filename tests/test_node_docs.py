"""The node help pages (web/docs/, shown by the frontend) and the README's node sections agree with the node
schemas, which hold every default and tooltip once."""

import re
from pathlib import Path

import pytest

from tools.node_docs import DOCS, format_default, render

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


@pytest.fixture(scope="module")
def schemas(pack):
    return {node.GET_SCHEMA().node_id: (node, node.GET_SCHEMA()) for node in pack.nodes.NODES}


def readme_sections() -> dict[str, str]:
    """Node id -> the text of its README section ("### Title (`Id`, `Id2`)" up to the next heading)."""
    text = README.read_text()
    sections = {}
    for match in re.finditer(r"^### .+? \(((?:`\w+`(?:, )?)+)\)\n(.*?)(?=^#)", text, re.M | re.S):
        for node_id in re.findall(r"`(\w+)`", match[1]):
            sections[node_id] = match[2]
    return sections


def table_defaults(section: str) -> dict[str, str]:
    """Input name -> its cell in the section's `| input | default | meaning |` table ("`a`, `b` | 1, 2" rows
    give each name its own value)."""
    rows, in_table = {}, False
    for line in section.splitlines():
        if line.startswith("| input | default |"):
            in_table = True
            continue
        if not line.startswith("|"):
            in_table = False
        if not in_table or line.startswith("|---"):
            continue
        name_cell, default_cell = (c.strip() for c in line.strip("|").split("|")[:2])
        names = re.findall(r"`(\w+)`", name_cell.split("(optional)")[0])
        defaults = [d.strip() for d in default_cell.split(", ")]
        rows.update(zip(names, defaults, strict=True) if len(defaults) == len(names) else
                    dict.fromkeys(names, default_cell))
    return rows


def test_every_node_has_a_current_help_page(schemas):
    assert {p.stem for p in DOCS.glob("*.md")} == set(schemas)
    for node_id, (node, _) in schemas.items():
        assert (DOCS / f"{node_id}.md").read_text() == render(node), (
            f"web/docs/{node_id}.md is stale: run `python -m tools.node_docs`")


def test_the_readme_lists_every_node(schemas):
    text = README.read_text()
    for node_id, (_, schema) in schemas.items():
        assert f"| {schema.display_name} | `{node_id}` |" in text, f"{node_id} is missing from the README's node list"


def test_the_readme_tables_give_every_input_with_the_schema_default(schemas):
    sections = readme_sections()
    wrong = []
    for node_id, (_, schema) in schemas.items():
        assert node_id in sections, f"the README has no section for {node_id}"
        defaults = table_defaults(sections[node_id])
        for item in schema.inputs or []:
            default = getattr(item, "default", None)
            if item.id not in defaults:
                wrong.append(f"{node_id}: no row for `{item.id}`")
            elif default is not None and defaults[item.id] != format_default(default):
                wrong.append(f"{node_id}.{item.id}: {defaults[item.id]!r}, the schema's {format_default(default)!r}")
    assert not wrong, "\n".join(wrong)
