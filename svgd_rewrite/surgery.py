"""Rewrite stage: the GraphDef surgery of the paper's Figure 6 (right), one site at a time.

For each site, with g = ∂J/∂σ' at P's g input, the transform T (``svgd_transform``, written
once as TensorFlow code and traced per site) is::

    m     = mean(g ⊙ g)                     (float32; over the batch axis, or every axis but
                                             the channel for granularity="channel")
    r'    = ρ·r + (1-ρ)·m                   (m divided by the loss scale² under mixed precision)
    r_new = r' where r' < ∞, else r         (a step with non-finite g leaves r as it was)
    r    ← r_new
    ĝ     = g · (s·rsqrt(r_new + ε))        (reshaped to broadcast, cast back to g's dtype)
    P's g input ← ĝ                         (every other consumer of g keeps g)

Every inserted op is compiled by XLA and is a TFLite builtin (``INSERTED_OPS``). The traced
nodes are renamed into ``svgd_rewrite/site_K/`` (``inserted_name``) and spliced in; the
placeholder standing for g is replaced by g itself. With ``transform="identity"`` ĝ = g and
the accumulators are still updated.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import graph_pb2, node_def_pb2

from .distribute import collective_templates, reduce_for
from .ir import map_colocation, parse_input, tensor_name
from .load import MARKER_NODE
from .options import Options
from .plan import Plan, PlannedSite
from .validate import check_rewritten_graph

SCOPE = "svgd_rewrite"
FORMAT_VERSION = 2

# The op types T inserts (besides the accumulator's own variable/placeholder), for the README
# table and the portability tests: each compiles with XLA and is a TFLite builtin.
INSERTED_OPS = ("Cast", "Square", "Mean", "Mul", "AddV2", "RealDiv", "Less", "SelectV2",
                "Rsqrt", "Reshape", "ReadVariableOp", "AssignVariableOp", "Identity", "Const")

# Placeholders of the traced template that the splice replaces by tensors of the graph, and
# the constant it sets (a collective's instance key, one per logical site).
_G, _LOSS_SCALE, _INSTANCE_KEY = "g", "loss_scale", "instance_key"


def inserted_name(site: int, role: str) -> str:
    """The name of an inserted node: ``role`` is ``accumulator``, ``r``, ``r_new``,
    ``assign_r``, ``g_hat``, ``initializer`` or ``zeros`` (graph variables)."""
    return f"{SCOPE}/site_{site}/{role}"


@dataclass(frozen=True)
class Accumulator:
    """An accumulator r of one site: its variable (or the placeholder its handle is fed
    through), its shape, and the names of its read, update and (graph variables) initializer."""

    placeholder: str
    shape: tuple[int, ...]
    site: int
    group: int = 0  # tf.distribute: the logical site (replica 0's site index)
    replica: int | None = None  # tf.distribute: the replica whose component feeds it

    @property
    def read(self) -> str:
        return inserted_name(self.site, "r") + ":0"

    @property
    def assign(self) -> str:
        return inserted_name(self.site, "assign_r")

    @property
    def initializer(self) -> str:
        return inserted_name(self.site, "initializer")

    @property
    def initial_value(self) -> str:
        return inserted_name(self.site, "zeros") + ":0"


@dataclass
class Rewritten:
    graph_def: graph_pb2.GraphDef
    accumulators: list[Accumulator]


def svgd_transform(g: tf.Tensor, r: tf.Tensor, site: PlannedSite, options: Options,
                   loss_scale: tf.Tensor | None,
                   mean_sq: tf.Tensor | None = None) -> tuple[tf.Tensor, tf.Tensor]:
    """T of Algorithm 1 for one site, in graph mode: returns (r_new, ĝ). ``mean_sq``: mean(g²)
    when it is computed elsewhere (all-reduced over tf.distribute replicas)."""
    f32, raw = tf.float32, tf.raw_ops
    if mean_sq is None:
        g32 = g if site.g_dtype == f32 else raw.Cast(x=g, DstT=f32, name="g_float32")
        axes = tf.constant(list(site.reduce_axes), tf.int32, name="reduce_axes")
        mean_sq = raw.Mean(input=raw.Square(x=g32, name="g_squared"), axis=axes,
                           keep_dims=False, name="mean_g_squared")
    coef = tf.constant(1.0 - options.rho, f32, name="one_minus_rho")
    if loss_scale is not None:  # the unscaled gradient's square: divide by scale²
        coef = raw.RealDiv(x=coef, y=raw.Square(x=loss_scale, name="loss_scale_squared"),
                           name="coef")
    r_candidate = raw.AddV2(
        x=raw.Mul(x=r, y=tf.constant(options.rho, f32, name="rho"), name="r_decayed"),
        y=raw.Mul(x=mean_sq, y=coef, name="r_fresh"), name="r_candidate")
    finite = raw.Less(x=r_candidate, y=tf.constant(np.inf, f32, name="infinity"),
                      name="is_finite")  # False for inf and NaN
    r_new = raw.SelectV2(condition=finite, t=r_candidate, e=r, name="r_new")
    if options.transform == "identity":
        return r_new, raw.Identity(input=g, name="g_hat")
    factor = raw.Mul(
        x=raw.Rsqrt(x=raw.AddV2(x=r_new, y=tf.constant(options.epsilon, f32, name="epsilon"),
                                name="r_plus_epsilon"), name="rsqrt"),
        y=tf.constant(options.scale, f32, name="scale"), name="factor")
    if site.broadcast_shape is not None:
        factor = raw.Reshape(tensor=factor, name="factor_broadcast", shape=tf.constant(
            list(site.broadcast_shape), tf.int32, name="broadcast_shape"))
    if site.g_dtype != f32:
        factor = raw.Cast(x=factor, DstT=site.g_dtype, name="factor_cast")
    return r_new, raw.Mul(x=g, y=factor, name="g_hat")


def replica_mean_square(g: tf.Tensor, site: PlannedSite, reduce) -> tf.Tensor:
    """mean(g²) over every replica's g (tf.distribute): this replica's sum of g² and count of
    squared elements, packed into one vector, summed over the replicas (``reduce``: None for
    an ``AddN`` of the local replicas' vectors, fed as ``peer_J``; else a collective
    template) and divided."""
    f32, raw = tf.float32, tf.raw_ops
    size = int(np.prod(site.accumulator_shape, dtype=np.int64))
    g32 = g if site.g_dtype == f32 else raw.Cast(x=g, DstT=f32, name="g_float32")
    axes = tf.constant(list(site.reduce_axes), tf.int32, name="reduce_axes")
    sums = raw.Sum(input=raw.Square(x=g32, name="g_squared"), axis=axes, keep_dims=False,
                   name="sum_g_squared")
    count = raw.RealDiv(x=raw.Cast(x=raw.Size(input=g32, out_type=tf.int64), DstT=f32),
                        y=tf.constant(float(size), f32), name="count")
    flat = tf.constant([-1], tf.int32, name="flat")
    packed = raw.ConcatV2(values=[raw.Reshape(tensor=sums, shape=flat),
                                  raw.Reshape(tensor=count, shape=tf.constant([1], tf.int32))],
                          axis=tf.constant(0, tf.int32), name="packed")
    if reduce is None:
        parts = [packed if j == site.replica else
                 tf.compat.v1.placeholder(f32, (size + 1,), name=f"peer_{j}")
                 for j in range(len(site.peers))]
        total = raw.AddN(inputs=parts, name="all_reduced")
    else:
        token = ([tf.compat.v1.placeholder(tf.resource, (), name="ordering_token")]
                 if reduce.ordering_token else [])
        total = raw.CollectiveReduceV2(
            input=packed, group_size=tf.compat.v1.placeholder(tf.int32, (), name="group_size"),
            group_key=tf.compat.v1.placeholder(tf.int32, (), name="group_key"),
            # set per logical site when spliced: one trace serves every site of a geometry
            instance_key=tf.constant(0, tf.int32, name=_INSTANCE_KEY),
            ordering_token=token, merge_op="Add", final_op="Id",
            communication_hint=reduce.communication_hint,
            timeout_seconds=reduce.timeout_seconds, name="all_reduced")
    total_sums, total_count = raw.SplitV(
        value=total, size_splits=tf.constant([size, 1], tf.int64), axis=tf.constant(0, tf.int32),
        num_split=2, name="split")
    return raw.Reshape(tensor=raw.RealDiv(x=total_sums, y=total_count, name="mean"),
                       shape=tf.constant(list(site.accumulator_shape), tf.int32),
                       name="mean_g_squared")


def _trace_site(site: PlannedSite, options: Options, kind: str, accumulator: str,
                reduce=None) -> graph_pb2.GraphDef:
    """The inserted nodes of one site, traced into a scratch graph (names not yet prefixed).

    ``kind``: ``placeholder`` (a resource handle fed on import: TF2 functions), ``resource``
    (``VarHandleOp``) or ``ref`` (``VariableV2``), like the graph's own variables. Sites with
    the same geometry share one trace.
    """
    key = (site.g_dtype, site.reduce_axes, site.broadcast_shape, site.loss_scale is not None,
           options, kind) + ((site.accumulator_shape, accumulator) if kind != "placeholder" else ())
    if site.peers:  # tf.distribute: this replica's slot among its peers, the collective group
        key += (site.accumulator_shape, site.replica, len(site.peers),
                replace(reduce, instance_key=0) if reduce is not None else None)
    if key not in _TRACES:
        if len(_TRACES) >= 512:
            _TRACES.clear()
        _TRACES[key] = _trace(site, options, kind, accumulator, reduce)
    return _TRACES[key]


_TRACES: dict[tuple, graph_pb2.GraphDef] = {}


def _trace(site: PlannedSite, options: Options, kind: str, accumulator: str,
           reduce) -> graph_pb2.GraphDef:
    f32, raw = tf.float32, tf.raw_ops
    graph = tf.Graph()
    with graph.as_default():
        if kind == "placeholder":
            acc = tf.compat.v1.placeholder(tf.resource, (), name="accumulator")
        elif kind == "resource":
            acc = raw.VarHandleOp(dtype=f32, shape=site.accumulator_shape,
                                  shared_name=accumulator, name="accumulator")
        else:
            acc = raw.VariableV2(shape=site.accumulator_shape, dtype=f32, name="accumulator")
        if kind != "placeholder":
            zeros = tf.constant(np.zeros(site.accumulator_shape, np.float32), name="zeros")
            if kind == "resource":
                raw.AssignVariableOp(resource=acc, value=zeros, name="initializer")
            else:
                raw.Assign(ref=acc, value=zeros, validate_shape=True, use_locking=True,
                           name="initializer")
        r = (raw.Identity(input=acc, name="r") if kind == "ref"
             else raw.ReadVariableOp(resource=acc, dtype=f32, name="r"))
        g = tf.compat.v1.placeholder(site.g_dtype, name=_G)
        scale = (tf.compat.v1.placeholder(f32, (), name=_LOSS_SCALE)
                 if site.loss_scale is not None else None)
        mean_sq = replica_mean_square(g, site, reduce) if site.peers else None
        r_new, _ = svgd_transform(g, r, site, options, scale, mean_sq)
        if kind == "ref":
            raw.Assign(ref=acc, value=r_new, validate_shape=True, use_locking=True,
                       name="assign_r")
        else:
            raw.AssignVariableOp(resource=acc, value=r_new, name="assign_r")
    return graph.as_graph_def()


def _splice(traced: graph_pb2.GraphDef, site: PlannedSite, device: str,
            reduce=None) -> list[node_def_pb2.NodeDef]:
    """Rename the traced nodes into the site's scope and wire g (and the loss scale, the other
    replicas' statistics, the collective's group) in."""
    prefix = inserted_name(site.index, "")
    outside = {_G: tensor_name(site.match.g)}
    if site.loss_scale is not None:
        outside[_LOSS_SCALE] = site.loss_scale
    for j, peer in enumerate(site.peers):
        if j != site.replica:
            outside[f"peer_{j}"] = inserted_name(peer, "packed")
    if reduce is not None:
        outside.update(group_size=reduce.group_size, group_key=reduce.group_key)
        if reduce.ordering_token:
            outside["ordering_token"] = reduce.ordering_token

    def rename(inp: str) -> str:
        src, port, control = parse_input(inp)
        if src in outside:
            return ("^" + outside[src].split(":")[0]) if control else outside[src]
        return ("^" if control else "") + prefix + tensor_name((src, port))

    nodes = []
    for node in traced.node:
        if node.name in outside:
            continue
        new = node_def_pb2.NodeDef()
        new.CopyFrom(node)
        new.name = prefix + node.name
        del new.input[:]
        new.input.extend(rename(i) for i in node.input)
        if reduce is not None and node.name == _INSTANCE_KEY:
            new.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(reduce.instance_key, tf.int32))
        map_colocation(new, lambda name: prefix + name)  # follows the accumulator's new name
        if device:
            new.device = device
        nodes.append(new)
    return nodes


def apply_surgery(graph_def: graph_pb2.GraphDef, plan: Plan, options: Options,
                  accumulator_kind: str = "placeholder") -> Rewritten:
    """Insert every site's accumulator and T, reroute P's g input to ĝ, and validate."""
    out = graph_pb2.GraphDef()
    out.CopyFrom(graph_def)
    by_name = {n.name: n for n in out.node}
    accumulators, reroutes = [], []
    templates = collective_templates(graph_def) if plan.distribution else {}
    instance_keys: dict[tuple[int, ...], int] = {}
    for site in plan.sites:
        acc = Accumulator(placeholder=inserted_name(site.index, "accumulator"),
                          shape=site.accumulator_shape, site=site.index,
                          group=site.peers[0] if site.peers else site.index,
                          replica=site.replica)
        device = by_name[site.match.g[0]].device
        reduce = (reduce_for(plan.distribution, templates, device, instance_keys, site.peers)
                  if site.peers else None)
        traced = _trace_site(site, options, accumulator_kind, acc.placeholder, reduce)
        out.node.extend(_splice(traced, site, device, reduce))
        accumulators.append(acc)
        p_node = by_name[site.match.grad_op]
        old = parse_input(p_node.input[site.match.g_slot])
        assert (old[0], old[1]) == site.match.g, "P's g input moved under the rewrite"
        ghat = inserted_name(site.index, "g_hat")
        p_node.input[site.match.g_slot] = ghat
        reroutes.append((site.index, site.match.grad_op, site.match.g_slot, ghat))
    marker = json.dumps({"tool": "svgd-rewrite", "format": FORMAT_VERSION,
                         "options": options.to_dict(), "sites": len(plan.sites)}, sort_keys=True)
    marker_node = out.node.add(name=MARKER_NODE, op="Const")
    marker_node.attr["dtype"].type = tf.string.as_datatype_enum
    marker_node.attr["value"].tensor.CopyFrom(
        tf.make_tensor_proto(np.array(marker.encode(), dtype=object)))
    check_rewritten_graph(out, reroutes, SCOPE + "/", plan.tensor_types)
    return Rewritten(graph_def=out, accumulators=accumulators)
