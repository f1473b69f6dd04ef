"""The diagnostics taps: per site, the tensors of a rewritten step from which θ's virtual
gradient and its plain gradient follow, and the norm ratio ‖virtual‖/‖plain‖ from them.

From the edit log: a post-scaled application's target is the plain gradient and its scaled
copy the virtual one (both are computed by the step). A pre-scaled application's P reads ĝ
(its output is the virtual gradient); the plain one is a copy of P reading g, run on P's
inputs only when a ratio is wanted. The step can return the tapped tensors as it trains
(``Taps.names``), or a read-only cut of the graph computes them (``build_probe``: no variable
is written). Sites inside ``While`` loops are not tapped.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx
import tensorflow as tf
from tensorflow.core.framework import graph_pb2, node_def_pb2

from .edits import EditLog
from .ir import GraphIR
from .registry import WRITE_OP_PREFIXES


@dataclass(frozen=True)
class Tap:
    """One application of a site: θ's virtual gradient is ``virtual``; its plain gradient is
    ``plain``, or else ``node`` (P) run on ``inputs`` (P's data inputs, g in ĝ's slot)."""

    virtual: str
    plain: str | None = None
    node: node_def_pb2.NodeDef | None = None
    inputs: tuple[str, ...] = ()


@dataclass
class Taps:
    """Per site, its applications' taps."""

    sites: dict[int, list[Tap]] = field(default_factory=dict)

    def names(self) -> list[str]:
        """Every tensor the ratios read, once, in a fixed order."""
        out: dict[str, None] = {}
        for taps in self.sites.values():
            for t in taps:
                out.update(dict.fromkeys((t.virtual,) + ((t.plain,) if t.plain else t.inputs)))
        return list(out)

    def ratios(self, values: dict[str, tf.Tensor]) -> dict[int, tf.Tensor]:
        """Per site, ‖virtual gradient of θ‖ / ‖plain gradient of θ‖ over its applications,
        from the tapped tensors by name (a pre-scaled application's P runs again, on g);
        a handful of ops in all, so that logging every step stays cheap."""
        virtual, plain = [], []
        for site, taps in self.sites.items():
            virtual.append(_sum(_half_squared_norm(values[t.virtual]) for t in taps))
            plain.append(_sum(_half_squared_norm(values[t.plain] if t.plain else _rerun(
                t, values, f"svgd_plain_{site}_{k}")) for k, t in enumerate(taps)))
        ratios = tf.sqrt(tf.math.divide_no_nan(tf.stack(virtual), tf.stack(plain)))
        return dict(zip(self.sites, tf.unstack(ratios)))


def _half_squared_norm(t: tf.Tensor) -> tf.Tensor:
    return tf.nn.l2_loss(tf.cast(t, tf.float32))  # one op: Σ t² / 2


def _sum(terms) -> tf.Tensor:
    terms = list(terms)
    return terms[0] if len(terms) == 1 else tf.add_n(terms)


def _rerun(tap: Tap, values: dict[str, tf.Tensor], scope: str) -> tf.Tensor:
    """P (a copy of ``tap.node``) on ``tap.inputs``' tensors."""
    small = graph_pb2.GraphDef()
    for j, name in enumerate(tap.inputs):
        ph = small.node.add(name=f"input_{j}", op="Placeholder")
        ph.attr["dtype"].type = values[name].dtype.as_datatype_enum
    node = small.node.add()
    node.CopyFrom(tap.node)
    node.name, node.device = "plain", ""
    node.attr.pop("_class", None)
    node.input[:] = [f"input_{j}" for j in range(len(tap.inputs))]
    (plain,) = tf.graph_util.import_graph_def(
        small, input_map={f"input_{j}:0": tf.identity(values[n])  # captured in a branch
                          for j, n in enumerate(tap.inputs)},
        return_elements=["plain:0"], name=scope)
    return plain


def _tensor(name: str) -> str:
    return name if ":" in name else f"{name}:0"


def taps_of(graph_def: graph_pb2.GraphDef, edits: EditLog) -> Taps | None:
    """The taps of a rewritten GraphDef (its top-level sites); None when there are none."""
    by_name = {n.name: n for n in graph_def.node}
    taps = Taps()
    for r in edits.rerouted:
        node = by_name.get(r.node)
        if node is None:  # inside a function body (a While loop)
            continue
        inputs = [i for i in node.input if not i.startswith("^")]
        inputs[r.slot] = r.old
        copy = node_def_pb2.NodeDef()
        copy.CopyFrom(node)
        taps.sites.setdefault(r.site, []).append(Tap(
            virtual=_tensor(r.node), node=copy, inputs=tuple(_tensor(i) for i in inputs)))
    for s in edits.scaled:
        if s.target.split(":")[0] in by_name and s.scaled.split(":")[0] in by_name:
            taps.sites.setdefault(s.site, []).append(Tap(virtual=_tensor(s.scaled),
                                                         plain=_tensor(s.target)))
    return taps if taps.sites else None


def build_probe(graph_def: graph_pb2.GraphDef, taps: Taps) -> graph_pb2.GraphDef | None:
    """The read-only probe: ``graph_def`` cut to the tapped tensors and their ancestors (data
    and control inputs); None when the cut would write a variable."""
    g = GraphIR(graph_def).g
    wanted = {t.split(":")[0] for t in taps.names()}
    keep = set(wanted).union(*(nx.ancestors(g, name) for name in wanted))
    out = graph_pb2.GraphDef()
    out.versions.CopyFrom(graph_def.versions)
    out.library.CopyFrom(graph_def.library)
    out.node.extend(n for n in graph_def.node if n.name in keep)
    if any(n.op.startswith(WRITE_OP_PREFIXES) for n in out.node):
        return None
    return out
