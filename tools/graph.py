"""Build ComfyUI graphs in Python: API-format prompts for the executor.

    g = Graph()
    model, clip, vae = g.node("RandomModelLoader", shape="sd15").outputs(3)
    edit = g.node("P2PEditSpec", clip=clip, source_prompt="a cat", target_prompt="a dog")
    ...
    prompt = g.prompt()
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Graph", "Node", "Output"]


@dataclass(frozen=True)
class Output:
    node_id: str
    index: int

    def link(self) -> list:
        return [self.node_id, self.index]


@dataclass
class Node:
    node_id: str
    class_type: str
    inputs: dict = field(default_factory=dict)
    title: str | None = None

    def out(self, index: int = 0) -> Output:
        return Output(self.node_id, index)

    def outputs(self, count: int) -> tuple[Output, ...]:
        return tuple(self.out(i) for i in range(count))


class Graph:
    def __init__(self):
        self.nodes: dict[str, Node] = {}

    def node(self, class_type: str, node_id: str | None = None, title: str | None = None, **inputs) -> Node:
        node_id = node_id or str(len(self.nodes) + 1)
        if node_id in self.nodes:
            raise ValueError(f"node id {node_id} is used twice")
        node = Node(node_id, class_type, inputs, title)
        self.nodes[node_id] = node
        return node

    def prompt(self) -> dict:
        def value(v):
            if isinstance(v, Node):
                return v.out(0).link()
            if isinstance(v, Output):
                return v.link()
            return v

        return {
            nid: {"class_type": n.class_type, "inputs": {k: value(v) for k, v in n.inputs.items()}}
            for nid, n in self.nodes.items()
        }
