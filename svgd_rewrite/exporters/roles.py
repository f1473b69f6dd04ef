"""The annotated graph behind every export: each node with its op, dtype, shape and role."""
from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx
from tensorflow.core.framework import graph_pb2

from ..ir import GraphIR, Tensor
from ..load import VariableInfo
from ..report import Report
from ..shapes import infer_shapes
from ..edits import EditLog

ROLES = ("leaf", "site", "upstream_gradient", "param_gradient_op", "inserted", "other")
ROLE_TITLES = {"leaf": "leaf θ", "site": "site σ'", "upstream_gradient": "upstream gradient g",
               "param_gradient_op": "param-gradient op P", "inserted": "inserted",
               "other": "other"}


@dataclass
class ExportSource:
    """What the exporters draw: both graphs, the report, and the variables' shapes."""

    original: graph_pb2.GraphDef
    rewritten: graph_pb2.GraphDef
    report: Report
    variables: dict[str, VariableInfo]
    edits: EditLog = field(default_factory=EditLog)  # what the rewrite changed


def source_of(result) -> ExportSource:
    """An ExportSource from any front end's result (a ``RewriteResult``)."""
    return ExportSource(original=result.original_graph_def, rewritten=result.graph_def,
                        report=result.report, variables=result.graph_variables,
                        edits=result.edits)


def node_roles(source: ExportSource, graph: str = "rewritten") -> dict[str, str]:
    """Role of every node that has one (the rest are ``other``)."""
    gd = source.rewritten if graph == "rewritten" else source.original
    names = {n.name for n in gd.node}
    roles: dict[str, str] = {}
    for p, info in source.variables.items():
        if info.trainable and p in names:
            roles[p] = "leaf"
    for site in source.report.sites:
        roles[Tensor.parse(site.upstream_gradient).node] = "upstream_gradient"
        roles[site.gradient_op] = "param_gradient_op"
        roles[site.node] = "site"
    if graph == "rewritten":
        for name in source.edits.inserted_nodes():
            roles[name] = "inserted"
    return roles


def annotated_graph(source: ExportSource, graph: str = "rewritten") -> nx.MultiDiGraph:
    """The graph as networkx: node attrs ``op``, ``dtype``, ``shape``, ``role``; edge attrs
    ``input_index`` and ``control``."""
    gd = source.rewritten if graph == "rewritten" else source.original
    shapes = infer_shapes(gd, {p: v for p, v in source.variables.items()
                               if p in {n.name for n in gd.node}})
    roles = node_roles(source, graph)
    ir = GraphIR(gd)
    g = nx.MultiDiGraph(name=graph)
    for n in gd.node:
        dtype, shape = shapes.get(Tensor(n.name, 0), (None, None))
        g.add_node(n.name, op=n.op, dtype=dtype.name if dtype is not None else "",
                   shape=str(shape.as_list()) if shape is not None and shape.rank is not None
                   else ("?" if shape is not None else ""),
                   role=roles.get(n.name, "other"))
    for u, v, data in ir.g.edges(data=True):
        g.add_edge(u, v, input_index=int(data["slot"]), control=bool(data["control"]))
    return g
