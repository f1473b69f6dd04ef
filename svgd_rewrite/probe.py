"""The diagnostics probe: a read-only copy of a rewritten step that computes, per site, θ's
virtual gradient and its plain gradient, without training.

From the edit log: a pre-scaled application's P reads ĝ (its output is the virtual
gradient); a copy of P reading g again gives the plain one. A post-scaled application's
target is the plain gradient and its scaled copy the virtual one. The graph is cut to what
those tensors need (``extract_sub_graph``): no variable is written, so running the probe
changes nothing. Sites inside ``While`` loops are not probed.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx
import tensorflow as tf
from tensorflow.core.framework import graph_pb2, node_def_pb2

from .edits import EditLog
from .ir import GraphIR
from .names import SCOPE
from .registry import WRITE_OP_PREFIXES


@dataclass
class Probe:
    """The probe graph and, per site, the tensors of θ's (virtual, plain) gradient."""

    graph_def: graph_pb2.GraphDef
    gradients: dict[int, list[tuple[str, str]]] = field(default_factory=dict)


def _tensor(name: str) -> str:
    return name if ":" in name else f"{name}:0"


def build_probe(graph_def: graph_pb2.GraphDef, edits: EditLog) -> Probe | None:
    """The probe of a rewritten GraphDef; None when no site can be probed or the cut graph
    would write a variable."""
    probe = graph_pb2.GraphDef()
    probe.CopyFrom(graph_def)
    by_name = {n.name: n for n in probe.node}
    gradients: dict[int, list[tuple[str, str]]] = {}
    for r in edits.rerouted:
        plain = node_def_pb2.NodeDef()
        plain.CopyFrom(by_name[r.node])
        plain.name = f"{SCOPE}/probe/site_{r.site}/plain_{r.application}"
        plain.input[r.slot] = r.old
        del plain.input[len([i for i in plain.input if not i.startswith("^")]):]
        probe.node.append(plain)
        gradients.setdefault(r.site, []).append((_tensor(r.node), _tensor(plain.name)))
    for s in edits.scaled:
        gradients.setdefault(s.site, []).append((_tensor(s.scaled), _tensor(s.target)))
    if not gradients:
        return None
    wanted = {t.split(":")[0] for pairs in gradients.values() for p in pairs for t in p}
    cut = _cut(probe, wanted)
    if any(n.op.startswith(WRITE_OP_PREFIXES) for n in cut.node):
        return None
    return Probe(graph_def=cut, gradients=gradients)


def _cut(graph_def: graph_pb2.GraphDef, wanted: set[str]) -> graph_pb2.GraphDef:
    """``graph_def`` with only ``wanted`` and their ancestors (data and control inputs)."""
    g = GraphIR(graph_def).g
    keep = set(wanted).union(*(nx.ancestors(g, name) for name in wanted))
    out = graph_pb2.GraphDef()
    out.versions.CopyFrom(graph_def.versions)
    out.library.CopyFrom(graph_def.library)
    out.node.extend(n for n in graph_def.node if n.name in keep)
    return out


def norm_ratios(values: dict[int, list[tuple[tf.Tensor, tf.Tensor]]]) -> dict[int, tf.Tensor]:
    """Per site, ‖virtual gradient of θ‖ / ‖plain gradient of θ‖ over its applications."""
    out = {}
    for site, pairs in values.items():
        virtual = tf.add_n([tf.reduce_sum(tf.square(tf.cast(v, tf.float32))) for v, _ in pairs])
        plain = tf.add_n([tf.reduce_sum(tf.square(tf.cast(p, tf.float32))) for _, p in pairs])
        out[site] = tf.sqrt(tf.math.divide_no_nan(virtual, plain))
    return out
