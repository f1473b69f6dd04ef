"""A networkx view of a GraphDef: the analysis IR.

Nodes are GraphDef node names carrying their ``NodeDef``; an edge ``u -> v`` carries
``src_port`` (u's output index), ``slot`` (v's input index) and ``control``.
Tensors are written ``(node, port)``.
"""
from __future__ import annotations

from collections import deque
from typing import Iterable, Iterator

import networkx as nx
from tensorflow.core.framework import graph_pb2, node_def_pb2

Tensor = tuple[str, int]

PASS_THROUGH = frozenset({"Identity", "Snapshot", "StopGradient"})


def parse_input(name: str) -> tuple[str, int, bool]:
    """Split a NodeDef input string into (node, port, is_control)."""
    if name.startswith("^"):
        return name[1:], -1, True
    node, _, port = name.partition(":")
    return node, int(port) if port else 0, False


def tensor_name(t: Tensor) -> str:
    """The NodeDef input string of a tensor."""
    return t[0] if t[1] == 0 else f"{t[0]}:{t[1]}"


class GraphIR:
    """Read-only graph view of a GraphDef with data/control edges and tensor-level walks."""

    def __init__(self, graph_def: graph_pb2.GraphDef):
        self.graph_def = graph_def
        self.g = nx.MultiDiGraph()
        self.order: dict[str, int] = {}
        self.functions = {f.signature.name: f for f in graph_def.library.function}
        for i, node in enumerate(graph_def.node):
            self.g.add_node(node.name, node=node)
            self.order[node.name] = i
        for node in graph_def.node:
            for slot, inp in enumerate(node.input):
                src, port, control = parse_input(inp)
                if src not in self.g:
                    raise ValueError(f"node {node.name!r} reads missing node {src!r}")
                self.g.add_edge(src, node.name, src_port=port, slot=slot, control=control)

    def node(self, name: str) -> node_def_pb2.NodeDef:
        return self.g.nodes[name]["node"]

    def op(self, name: str) -> str:
        return self.node(name).op

    def nodes(self) -> Iterator[node_def_pb2.NodeDef]:
        return iter(self.graph_def.node)

    def data_input(self, name: str, slot: int) -> Tensor:
        src, port, control = parse_input(self.node(name).input[slot])
        assert not control
        return src, port

    def data_inputs(self, name: str) -> list[Tensor]:
        out = []
        for inp in self.node(name).input:
            src, port, control = parse_input(inp)
            if not control:
                out.append((src, port))
        return out

    def consumers(self, t: Tensor) -> list[tuple[str, int]]:
        """(node, slot) pairs that read tensor ``t``, in GraphDef order."""
        out = []
        for _, dst, data in self.g.out_edges(t[0], data=True):
            if not data["control"] and data["src_port"] == t[1]:
                out.append((dst, data["slot"]))
        return sorted(set(out), key=lambda c: (self.order[c[0]], c[1]))

    def ancestors(self, tensors: Iterable[Tensor], stop: frozenset[str] = frozenset()) -> set[str]:
        """Nodes whose outputs flow (by data edges) into any of ``tensors``, producers included.

        Port-aware through ``IdentityN``: output k depends on input k only.
        """
        seen_nodes: set[str] = set()
        seen_t: set[Tensor] = set()
        queue = deque(tensors)
        while queue:
            t = queue.popleft()
            if t in seen_t:
                continue
            seen_t.add(t)
            name, port = t
            if self.op(name) == "IdentityN":
                seen_nodes.add(name)
                if name not in stop:
                    queue.append(self.data_input(name, port))
                continue
            if name in seen_nodes:
                continue
            seen_nodes.add(name)
            if name not in stop:
                queue.extend(self.data_inputs(name))
        return seen_nodes

    def descendants(self, tensors: Iterable[Tensor]) -> set[str]:
        """Nodes that read (by data edges, transitively) any of ``tensors``."""
        seen: set[str] = set()
        queue = deque(dst for t in tensors for dst, _ in self.consumers(t))
        while queue:
            name = queue.popleft()
            if name in seen:
                continue
            seen.add(name)
            for _, dst, data in self.g.out_edges(name, data=True):
                if not data["control"] and dst not in seen:
                    queue.append(dst)
        return seen

    def aliases(self, t: Tensor) -> list[Tensor]:
        """``t`` and the tensors that pass it on unchanged (``Identity``, ``IdentityN`` port k).

        Inlined function calls turn arguments and results into such pass-through ops.
        """
        out, queue, seen = [], deque([t]), set()
        while queue:
            cur = queue.popleft()
            if cur in seen:
                continue
            seen.add(cur)
            out.append(cur)
            for dst, slot in self.consumers(cur):
                op = self.op(dst)
                if op in PASS_THROUGH:
                    queue.append((dst, 0))
                elif op == "IdentityN":
                    queue.append((dst, slot))
        return out

    def canonical(self, t: Tensor) -> Tensor:
        """Follow ``t`` back through pass-through ops to the tensor that produced its value."""
        while True:
            op = self.op(t[0])
            if op in PASS_THROUGH:
                t = self.data_input(t[0], 0)
            elif op == "IdentityN":
                t = self.data_input(t[0], t[1])
            else:
                return t
