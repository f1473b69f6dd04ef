"""A networkx view of a GraphDef: the analysis IR.

Nodes are GraphDef node names carrying their ``NodeDef``; an edge ``u -> v`` carries
``src_port`` (u's output index), ``slot`` (v's input index) and ``control``.
Tensors are written ``(node, port)``.
"""
from __future__ import annotations

from collections import deque
from typing import Callable, Iterable, Iterator, NamedTuple

import networkx as nx
from tensorflow.core.framework import graph_pb2, node_def_pb2


class Tensor(NamedTuple):
    """A tensor of the graph: output ``port`` of ``node``. ``str(t)`` is ``"node:port"``;
    ``tensor_name(t)`` the NodeDef input string (``node`` for port 0)."""

    node: str
    port: int = 0

    def __str__(self) -> str:
        return f"{self.node}:{self.port}"

    @classmethod
    def parse(cls, name: str) -> "Tensor":
        """``"node"``, ``"node:port"`` (or a NodeDef data input) as a Tensor."""
        node, port, control = parse_input(name)
        if control:
            raise ValueError(f"{name!r} is a control input, not a tensor")
        return cls(node, port)

from .registry import BACK_EDGE_OPS, MULTI_IDENTITY_OPS, PASS_THROUGH_OPS



def parse_input(name: str) -> tuple[str, int, bool]:
    """Split a NodeDef input string into (node, port, is_control)."""
    if name.startswith("^"):
        return name[1:], -1, True
    node, _, port = name.partition(":")
    return node, int(port) if port else 0, False


def map_colocation(node: node_def_pb2.NodeDef, target: Callable[[str], str | None]) -> None:
    """Rewrite a node's colocation constraints (``_class: loc:@name``): each named node becomes
    ``target(name)``, or is dropped when that is None (the attribute goes when none is left)."""
    if "_class" not in node.attr:
        return
    kept = []
    for entry in node.attr["_class"].list.s:
        name = target(entry.decode(errors="replace").removeprefix("loc:@"))
        if name is not None:
            kept.append(f"loc:@{name}".encode())
    if kept:
        del node.attr["_class"].list.s[:]
        node.attr["_class"].list.s.extend(kept)
    else:
        del node.attr["_class"]


def tensor_name(t: Tensor) -> str:
    """The NodeDef input string of a tensor."""
    return t[0] if t[1] == 0 else f"{t[0]}:{t[1]}"


class GraphIR:
    """Read-only graph view of a GraphDef with data/control edges and tensor-level walks.

    ``g`` is the networkx MultiDiGraph (for exporters and users); the walks use adjacency
    lists built once, so every walk is linear in the edges it visits.
    """

    def __init__(self, graph_def: graph_pb2.GraphDef):
        self.graph_def = graph_def
        self.g = nx.MultiDiGraph()
        self.order: dict[str, int] = {}
        self.functions = {f.signature.name: f for f in graph_def.library.function}
        self._nodes: dict[str, node_def_pb2.NodeDef] = {}
        self._data_in: dict[str, list[Tensor]] = {}
        self._out: dict[Tensor, list[tuple[str, int]]] = {}
        self._data_out: dict[str, list[str]] = {}
        self._ports_of: dict[str, set[int]] = {}
        self._by_op: dict[str, list[str]] | None = None
        self._topo: list[str] | None = None
        self._aliases: dict[Tensor, list[Tensor]] = {}
        self._consumers_of_op: dict[tuple[Tensor, str], list[tuple[str, int]]] = {}
        for i, node in enumerate(graph_def.node):
            self.g.add_node(node.name, node=node)
            self.order[node.name] = i
            self._nodes[node.name] = node
        for node in graph_def.node:
            data_in = []
            for slot, inp in enumerate(node.input):
                src, port, control = parse_input(inp)
                if src not in self._nodes:
                    raise ValueError(f"node {node.name!r} reads missing node {src!r}")
                self.g.add_edge(src, node.name, src_port=port, slot=slot, control=control)
                if not control:
                    data_in.append((src, port))
                    self._out.setdefault((src, port), []).append((node.name, slot))
                    self._data_out.setdefault(src, []).append(node.name)
                    self._ports_of.setdefault(src, set()).add(port)
            self._data_in[node.name] = data_in

    def node(self, name: str) -> node_def_pb2.NodeDef:
        return self._nodes[name]

    def op(self, name: str) -> str:
        return self._nodes[name].op

    def nodes(self) -> Iterator[node_def_pb2.NodeDef]:
        return iter(self.graph_def.node)

    def nodes_of_op(self, op: str) -> list[str]:
        """Names of the nodes of op type ``op``, in GraphDef order."""
        if self._by_op is None:
            self._by_op = {}
            for n in self.graph_def.node:
                self._by_op.setdefault(n.op, []).append(n.name)
        return self._by_op.get(op, [])

    def data_input(self, name: str, slot: int) -> Tensor:
        src, port, control = parse_input(self._nodes[name].input[slot])
        assert not control
        return src, port

    def data_inputs(self, name: str) -> list[Tensor]:
        return self._data_in[name]

    def consumers(self, t: Tensor) -> list[tuple[str, int]]:
        """(node, slot) pairs that read tensor ``t``, in GraphDef order."""
        return sorted(set(self._out.get(t, ())), key=lambda c: (self.order[c[0]], c[1]))

    def topological_order(self) -> list[str]:
        """Node names, producers before consumers (data and control edges). The back edges of
        v1 loops (``NextIteration`` → ``Merge``) are left out of the order."""
        if self._topo is None:
            dag = self.g
            back = [(u, v, k) for u, v, k in self.g.edges(keys=True)
                    if self._nodes[u].op in BACK_EDGE_OPS]
            if back:
                dag = self.g.copy()
                dag.remove_edges_from(back)
            self._topo = list(nx.lexicographical_topological_sort(dag, key=self.order.get))
        return self._topo

    def reach_bits(self, sources: dict[str, int], control: bool = False) -> dict[Tensor | str, int]:
        """For every node (and every ``IdentityN`` output), the bitset of ``sources`` nodes
        among its data ancestors (also control ancestors with ``control``), itself included:
        one pass in topological order.

        ``sources`` maps a node to its bit index. Port-aware through ``IdentityN``: output k
        carries what input k carries. Look a tensor up with ``bits_of``.
        """
        bits: dict = {}
        for name in self.topological_order():
            own = 1 << sources[name] if name in sources else 0
            if control:
                for i in self._nodes[name].input:
                    if i.startswith("^"):
                        own |= bits.get(i[1:], 0)
            if self._nodes[name].op in MULTI_IDENTITY_OPS:
                for k, t in enumerate(self._data_in[name]):
                    bits[(name, k)] = own | self.bits_of(bits, t)
                bits[name] = own
                continue
            acc = own
            for t in self._data_in[name]:
                acc |= self.bits_of(bits, t)
            bits[name] = acc
        return bits

    def bits_of(self, bits: dict, t: Tensor) -> int:
        """The bitset of tensor ``t`` from ``reach_bits``."""
        if self._nodes[t[0]].op in MULTI_IDENTITY_OPS:
            return bits.get(t, 0)
        return bits.get(t[0], 0)

    def downstream_bits(self, sinks: dict[str, int]) -> dict[str, int]:
        """For every node, the OR of the ``sinks`` bitsets of the nodes its outputs reach by
        data edges (itself included): one pass in reverse topological order. Port-aware
        through ``IdentityN``: input k reaches only what output k reaches."""
        node_bits: dict[str, int] = {}
        port_bits: dict[Tensor, int] = {}
        for name in reversed(self.topological_order()):
            is_idn = self._nodes[name].op in MULTI_IDENTITY_OPS
            acc = sinks.get(name, 0)
            for t in {(name, p) for p in self._ports(name)}:
                reached = 0
                for dst, slot in self._out.get(t, ()):
                    reached |= (port_bits.get((dst, slot), 0) if self._nodes[dst].op in MULTI_IDENTITY_OPS
                                else node_bits.get(dst, 0))
                if is_idn:
                    port_bits[t] = reached | sinks.get(name, 0)
                acc |= reached
            node_bits[name] = acc
        return node_bits

    def readers(self, name: str) -> list[tuple[str, int]]:
        """(node, slot) pairs that read any output of node ``name`` by data edges."""
        return [c for port in sorted(self._ports(name)) for c in self.consumers((name, port))]

    def _ports(self, name: str) -> set[int]:
        return self._ports_of.get(name, set())

    def ancestors(self, tensors: Iterable[Tensor]) -> set[str]:
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
            if self._nodes[name].op in MULTI_IDENTITY_OPS:
                seen_nodes.add(name)
                queue.append(self._data_in[name][port])
                continue
            if name in seen_nodes:
                continue
            seen_nodes.add(name)
            queue.extend(self._data_in[name])
        return seen_nodes

    def descendants(self, tensors: Iterable[Tensor]) -> set[str]:
        """Nodes that read (by data edges, transitively) any of ``tensors``."""
        seen: set[str] = set()
        queue = deque(dst for t in tensors for dst, _ in self._out.get(t, ()))
        while queue:
            name = queue.popleft()
            if name in seen:
                continue
            seen.add(name)
            queue.extend(d for d in self._data_out.get(name, ()) if d not in seen)
        return seen

    def aliases(self, t: Tensor) -> list[Tensor]:
        """``t`` and the tensors that pass it on unchanged (``Identity``, ``IdentityN`` port k).

        Inlined function calls turn arguments and results into such pass-through ops.
        Memoized: sibling layers share their input's (possibly large) alias tree.
        """
        if t in self._aliases:
            return self._aliases[t]
        out, queue, seen = [], deque([t]), set()
        while queue:
            cur = queue.popleft()
            if cur in seen:
                continue
            seen.add(cur)
            out.append(cur)
            for dst, slot in self.consumers(cur):
                op = self.op(dst)
                if op in PASS_THROUGH_OPS:
                    queue.append((dst, 0))
                elif op in MULTI_IDENTITY_OPS:
                    queue.append((dst, slot))
        self._aliases[t] = out
        return out

    def consumers_of_op(self, t: Tensor, op: str) -> list[tuple[str, int]]:
        """(node, slot) pairs of op type ``op`` that read ``t`` or one of its aliases
        (memoized per tensor and op type)."""
        key = (t, op)
        if key not in self._consumers_of_op:
            self._consumers_of_op[key] = [(n, s) for a in self.aliases(t)
                                          for n, s in self.consumers(a) if self.op(n) == op]
        return self._consumers_of_op[key]

    def canonical(self, t: Tensor) -> Tensor:
        """Follow ``t`` back through pass-through ops to the tensor that produced its value."""
        while True:
            op = self.op(t[0])
            if op in PASS_THROUGH_OPS:
                t = self.data_input(t[0], 0)
            elif op in MULTI_IDENTITY_OPS:
                t = self.data_input(t[0], t[1])
            else:
                return t


LARGE_CONSTANT = 1 << 16  # bytes


def without_large_constants(graph_def: graph_pb2.GraphDef) -> graph_pb2.GraphDef:
    """A copy of ``graph_def`` whose large constants (over ``LARGE_CONSTANT`` bytes: frozen
    weights, tables) are placeholders of the same dtype and shape: what importing for shapes
    and validation needs, without a second copy of the data."""
    out = graph_pb2.GraphDef()
    out.versions.CopyFrom(graph_def.versions)
    out.library.CopyFrom(graph_def.library)
    from tensorflow.python.framework import dtypes  # the sizes of DataType enums

    for node in graph_def.node:
        value = node.attr["value"].tensor if node.op == "Const" and "value" in node.attr else None
        if value is not None and _size_bytes(value, dtypes) > LARGE_CONSTANT:
            stub = out.node.add(name=node.name, op="Placeholder", device=node.device)
            stub.attr["dtype"].type = value.dtype
            stub.attr["shape"].shape.CopyFrom(value.tensor_shape)
            stub.input.extend(i for i in node.input if i.startswith("^"))
        else:
            out.node.add().CopyFrom(node)
    return out


def _size_bytes(tensor, dtypes) -> int:
    """A constant's data size from its shape and dtype (asking the proto for its byte size
    would serialize the data)."""
    n = 1
    for d in tensor.tensor_shape.dim:
        n *= max(d.size, 0)
    try:
        return n * dtypes.as_dtype(tensor.dtype).size
    except (TypeError, ValueError):
        return 0
