"""UI-format (LiteGraph) workflows: write them from a `Graph`, and turn them back into API prompts.

The example workflows are written by `tools.build_workflows` from Python descriptions, so their widget
values always follow the nodes' current inputs. `to_api` is what the frontend's "queue" does
(graphToPrompt), for running a workflow file headless; the browser test checks the two agree.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from .graph import Graph, Node, Output

__all__ = ["to_ui", "to_api", "FRONTEND_ONLY"]

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
FRONTEND_ONLY = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}


def _inputs(node_class) -> list[tuple[str, object, dict]]:
    spec = node_class.INPUT_TYPES()
    out = []
    for section in ("required", "optional"):
        for name, entry in spec.get(section, {}).items():
            kind = entry[0]
            options = entry[1] if len(entry) > 1 and isinstance(entry[1], dict) else {}
            out.append((name, kind, options))
    return out


def _is_widget(kind) -> bool:
    return isinstance(kind, (list, tuple)) or kind in WIDGET_TYPES


def _widget_default(kind, options):
    if "default" in options:
        return options["default"]
    if isinstance(kind, (list, tuple)):
        return kind[0]
    return {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}.get(kind)


class _Links:
    """A workflow's links, numbered from 1 in the order they are made, and the links leaving each output."""

    def __init__(self, graph: Graph, node_classes: dict, ids: dict[str, int]):
        self.graph, self.node_classes, self.ids = graph, node_classes, ids
        self.rows: list[list] = []
        self.outgoing: dict[tuple[str, int], list[int]] = {}

    def add(self, value: Node | Output, target: str, slot: int) -> int:
        source = value.out(0) if isinstance(value, Node) else value
        link_id = len(self.rows) + 1
        type_name = self.node_classes[self.graph.nodes[source.node_id].class_type].RETURN_TYPES[source.index]
        self.rows.append([link_id, self.ids[source.node_id], source.index, self.ids[target], slot, type_name])
        self.outgoing.setdefault((source.node_id, source.index), []).append(link_id)
        return link_id


def _sockets_and_widgets(nid: str, node: Node, cls, links: _Links) -> tuple[list[dict], list]:
    """A node's input sockets (linked inputs and unlinked non-widget ones) and its widget values, in order."""
    inputs, widgets = [], []
    optional = cls.INPUT_TYPES().get("optional", {})
    for name, kind, options in _inputs(cls):
        value = node.inputs.get(name)
        linked = isinstance(value, (Node, Output))
        if _is_widget(kind):
            widgets.append(_widget_default(kind, options) if linked or value is None else value)
            if options.get("control_after_generate"):
                widgets.append("fixed")
        if linked:
            entry = {"name": name, "type": "COMBO" if isinstance(kind, (list, tuple)) else kind,
                     "link": links.add(value, nid, len(inputs))}
            if _is_widget(kind):
                entry["widget"] = {"name": name}
            inputs.append(entry)
        elif not _is_widget(kind):
            entry = {"name": name, "type": kind, "link": None}
            if name in optional:
                entry["shape"] = 7  # the frontend draws optional sockets hollow
            inputs.append(entry)
    return inputs, widgets


def _ui_node(node_id: int, order: int, node: Node, cls, inputs: list, widgets: list, position, size,
             models: list[dict] | None) -> dict:
    returns = cls.RETURN_TYPES
    names = getattr(cls, "RETURN_NAMES", None) or returns
    properties: dict = {"Node name for S&R": node.class_type}
    if models:
        properties["models"] = models
    ui_node = {
        "id": node_id,
        "type": node.class_type,
        "pos": list(position),
        "size": list(size),
        "flags": {},
        "order": order,
        "mode": 0,
        "inputs": inputs,
        "outputs": [{"name": names[i], "type": returns[i], "slot_index": i, "links": []} for i in range(len(returns))],
        "properties": properties,
        "widgets_values": widgets,
    }
    if node.title:
        ui_node["title"] = node.title
    return ui_node


def _note(node_id: int, order: int, text: str, position, size) -> dict:
    return {"id": node_id, "type": "MarkdownNote", "pos": list(position), "size": list(size), "flags": {},
            "order": order, "mode": 0, "inputs": [], "outputs": [], "properties": {}, "widgets_values": [text],
            "color": "#432", "bgcolor": "#653"}


def to_ui(
    graph: Graph,
    node_classes: dict,
    positions: dict[str, tuple[float, float]],
    notes: Sequence[tuple[str, tuple[float, float], tuple[float, float]]] = (),
    models: dict[str, list[dict]] | None = None,
    sizes: dict[str, tuple[float, float]] | None = None,
) -> dict:
    """A LiteGraph workflow of `graph`. `notes` are MarkdownNote nodes (text, position, size);
    `models` maps node ids to the model files the frontend can offer to download."""
    ids = {nid: i + 1 for i, nid in enumerate(graph.nodes)}
    links = _Links(graph, node_classes, ids)
    ui_nodes = []
    for nid, node in graph.nodes.items():
        cls = node_classes[node.class_type]
        inputs, widgets = _sockets_and_widgets(nid, node, cls, links)
        ui_nodes.append(_ui_node(ids[nid], len(ui_nodes), node, cls, inputs, widgets, positions[nid],
                                 (sizes or {}).get(nid, (320, 130)), (models or {}).get(nid)))
    for (source_id, index), link_ids in links.outgoing.items():
        ui_nodes[ids[source_id] - 1]["outputs"][index]["links"] = link_ids
    for text, position, size in notes:
        ui_nodes.append(_note(len(ui_nodes) + 1, len(ui_nodes), text, position, size))
    return {
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, "p2p:" + ",".join(n.class_type for n in graph.nodes.values()))),
        "revision": 0,
        "last_node_id": len(ui_nodes),
        "last_link_id": len(links.rows),
        "nodes": ui_nodes,
        "links": links.rows,
        "groups": [],
        "config": {},
        "extra": {"ds": {"scale": 0.75, "offset": [80, 120]}},
        "version": 0.4,
    }


def to_api(workflow: dict, node_classes: dict) -> dict:
    """The API prompt the frontend queues for a UI-format workflow (active nodes only)."""
    links = {link[0]: link for link in workflow["links"]}
    prompt = {}
    for node in workflow["nodes"]:
        if node["type"] in FRONTEND_ONLY or node.get("mode", 0) in (2, 4):  # 2 muted, 4 bypassed
            continue
        cls = node_classes[node["type"]]
        linked = {}
        for entry in node.get("inputs", []):
            if entry.get("link") is not None:
                link = links[entry["link"]]
                linked[entry["name"]] = [str(link[1]), link[2]]
        values = iter(node.get("widgets_values", []))
        inputs = {}
        for name, kind, options in _inputs(cls):
            if _is_widget(kind):
                value = next(values)
                if options.get("control_after_generate"):
                    next(values)
                if name not in linked:
                    inputs[name] = value
            if name in linked:
                inputs[name] = linked[name]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt
