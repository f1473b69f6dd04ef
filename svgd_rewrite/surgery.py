"""Rewrite stage: the GraphDef surgery of the paper's Figure 6 (right), one accumulator at a time.

Each planned site owns one accumulator r (one per trained variable θ) and scales every
application of θ in the step. With g_a the upstream gradient of application a, T
(``svgd_transform``, written once as TensorFlow code and traced per site geometry) is::

    m     = Σ_a Σ g_a² / Σ_a rows_a         (float32, over the axes r does not keep; one
                                             application: mean(g²); tf.distribute: over the
                                             replicas too; loops: over every timestep)
    r'    = ρ·r + (1-ρ)·m                   (m divided by the loss scale² under mixed precision)
    r_new = r' where finite, else r         (an overflow, NaN, a skipped mixed-precision step)
    r    ← r_new
    f     = s·rsqrt(r' + ε)                 (0 when r' overflowed: that step's update is 0)
    pre-scaled a:  P_a's g input ← g_a·f    (every other consumer of g_a keeps g_a)
    post-scaled a: P_a's output  → P_a(x, g_a)·f   (where P keeps σ''s channel axis: exact,
                                             and no g-sized tensor is written)

The reduction reads g once on TensorFlow's default runtime (``EuclideanNorm``²); the portable
form (``Square`` + ``Sum``/``Mean``, fused by XLA) is used for jit-compiled steps and with
``portable=True``; every op of the portable form is compiled by XLA and is a TFLite builtin
(``INSERTED_OPS``). The traced nodes are renamed into ``svgd_rewrite/site_K/``
(``inserted_name``) and spliced in; placeholders standing for graph tensors are replaced by
those tensors. With ``transform="identity"`` ĝ = g and the accumulators are still updated.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import graph_pb2, node_def_pb2

from .distribute import collective_templates, reduce_for
from .ir import map_colocation, parse_input, tensor_name
from .load import MARKER_NODE
from .edits import EditLog
from .graph_edit import GraphEditor, input_string
from .loop_statistics import LoopStatistic
from .names import HYPERPARAMETERS, hyperparameter_name, inserted_name
from .options import Options
from .transform import mean_of_squares, sum_of_squares, svgd_factor, svgd_update
from .plan import Plan, PlannedSite
from .validate import check_rewritten_graph

FORMAT_VERSION = 3

# The op types T inserts in its portable form (besides the accumulator's own
# variable/placeholder), for the README table and the portability tests: each compiles with
# XLA and is a TFLite builtin. The default runtime's one-pass form adds ``ONE_PASS_OPS``.
INSERTED_OPS = ("Cast", "Square", "Sum", "Mean", "Mul", "AddV2", "Sub", "AddN", "RealDiv",
                "Less", "SelectV2", "Rsqrt", "Reshape", "Size", "ReadVariableOp",
                "AssignVariableOp", "Identity", "Const")
ONE_PASS_OPS = ("EuclideanNorm",)

# Placeholders of the traced template that the splice replaces by tensors of the graph, and
# the constant it sets (a collective's instance key, one per logical site).
_LOSS_SCALE, _INSTANCE_KEY, _HYPER = "loss_scale", "instance_key", "hyper_"


@dataclass(frozen=True)
class Accumulator:
    """An accumulator r of one site: its variable (or the placeholder its handle is fed
    through), its shape, its state key, and the names of its read, update and (graph
    variables) initializer."""

    placeholder: str
    shape: tuple[int, ...]
    site: int
    key: str = ""  # the training state's name for r (``svgd/<key>``)
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
    edits: EditLog = field(default_factory=EditLog)  # what the surgery changed
    options: Options = field(default_factory=Options)  # s, ρ, ε: their values at step 0
    hyperparameters: dict[str, str] = field(default_factory=dict)  # name -> graph input


# --- T, as TensorFlow code ------------------------------------------------------------------

def _broadcast(factor: tf.Tensor, shape: tuple[int, ...] | None, dtype: tf.DType,
               name: str, accumulator_shape: tuple[int, ...]) -> tf.Tensor:
    """f (of ``accumulator_shape``) reshaped to ``shape`` (None, or r's shape behind leading
    ones: it broadcasts as it is) and cast to ``dtype``."""
    raw = tf.raw_ops
    if shape is not None:
        trailing = list(shape)
        while trailing and trailing[0] == 1 and len(trailing) > len(accumulator_shape):
            trailing.pop(0)
        if trailing == list(accumulator_shape):
            shape = None
    if shape is not None:
        factor = raw.Reshape(tensor=factor, shape=tf.constant(list(shape), tf.int32),
                             name=f"{name}_shape")
    if dtype != tf.float32:
        factor = raw.Cast(x=factor, DstT=dtype, name=f"{name}_cast")
    return factor


def _targets(site: PlannedSite) -> list[tuple[str, tuple[int, ...], tf.DType]]:
    """The tensors post-scaling multiplies (one per P output, or per gradient-loop output that
    several P's of θ add into), with f's broadcast shape over them."""
    out, seen = [], set()
    for a in site.applications:
        if a.post_scaled and a.target not in seen:
            seen.add(a.target)
            out.append((a.target, a.post_shape, a.target_dtype or a.g_dtype))
    return out


def _trace_key(site: PlannedSite, options: Options, one_pass: bool, reduce) -> tuple:
    apps = tuple((a.loop is not None, a.g_dtype, a.reduce_axes, a.broadcast_shape, a.post_shape,
                  a.target_dtype) for a in site.applications)
    targets = tuple(a.target for a in site.applications)  # which applications share a target
    shared = tuple(targets.index(t) for t in targets)
    key = (apps, shared, site.accumulator_shape, site.loss_scale is not None,
           options.transform, one_pass)  # s, ρ, ε are inputs: one trace serves every value
    if site.peers:  # tf.distribute: this replica's slot among its peers, the collective group
        key += (site.replica, len(site.peers),
                replace(reduce, instance_key=0) if reduce is not None else None)
    return key


def _trace_site(site: PlannedSite, options: Options, one_pass: bool,
                traces: dict, reduce=None) -> graph_pb2.GraphDef:
    """The inserted nodes of one site, traced into a scratch graph (names not yet prefixed);
    the accumulator is a resource handle placeholder. Sites with the same geometry share one
    trace (``traces``: the cache of one surgery)."""
    key = _trace_key(site, options, one_pass, reduce)
    if key not in traces:
        traces[key] = _trace(site, options, one_pass, reduce)
    return traces[key]


def _trace(site: PlannedSite, options: Options, one_pass: bool, reduce) -> graph_pb2.GraphDef:
    f32, raw = tf.float32, tf.raw_ops
    graph = tf.Graph()
    with graph.as_default():
        # r as a resource handle fed on import; a TF1 front end materializes it as a
        # variable node of its graph's kind (``graphdef.materialize_accumulator``)
        acc = tf.compat.v1.placeholder(tf.resource, (), name="accumulator")
        r = raw.ReadVariableOp(resource=acc, dtype=f32, name="r")
        loss_scale = (tf.compat.v1.placeholder(f32, (), name=_LOSS_SCALE)
                      if site.loss_scale is not None else None)
        hyper = {h: tf.compat.v1.placeholder(f32, (), name=f"{_HYPER}{h}")
                 for h in HYPERPARAMETERS}
        gs = {}
        for k, a in enumerate(site.applications):
            if a.loop is None:
                gs[k] = tf.compat.v1.placeholder(a.g_dtype, name=f"g_{k}")
        single = len(site.applications) == 1 and site.applications[0].loop is None
        if single and not site.peers:
            a = site.applications[0]
            mean_sq = mean_of_squares(gs[0], a.g_dtype, a.reduce_axes, site.accumulator_shape,
                                       one_pass)
        else:
            sums, counts = [], []
            for k, a in enumerate(site.applications):
                if a.loop is None:
                    with tf.name_scope(f"application_{k}"):
                        s, n = sum_of_squares(gs[k], a.g_dtype, a.reduce_axes,
                                              site.accumulator_shape, one_pass)
                else:
                    s = tf.compat.v1.placeholder(f32, site.accumulator_shape,
                                                 name=f"loop_sum_{k}")
                    n = tf.compat.v1.placeholder(f32, (), name=f"loop_count_{k}")
                sums.append(s)
                counts.append(n)
            total = sums[0] if len(sums) == 1 else raw.AddN(inputs=sums, name="sum_g_squared")
            rows = counts[0] if len(counts) == 1 else raw.AddN(inputs=counts, name="rows")
            if site.peers:
                total, rows = _all_reduce(total, rows, site, reduce)
            mean_sq = raw.RealDiv(x=total, y=rows, name="mean_g_squared")
        r_new, r_step = svgd_update(r, mean_sq, hyper["rho"], loss_scale)
        raw.AssignVariableOp(resource=acc, value=r_new, name="assign_r")
        if options.transform == "identity":
            for k, a in enumerate(site.applications):
                if a.loop is None:
                    raw.Identity(input=gs[k], name=f"g_hat_{k}")
        else:
            factor = svgd_factor(r_step, hyper["scale"], hyper["epsilon"])
            for k, a in enumerate(site.applications):
                if a.loop is None and not a.post_scaled:
                    f = _broadcast(factor, a.broadcast_shape, a.g_dtype, f"factor_{k}",
                                   site.accumulator_shape)
                    raw.Mul(x=gs[k], y=f, name=f"g_hat_{k}")
            for t, (_, shape, dtype) in enumerate(_targets(site)):
                target = tf.compat.v1.placeholder(dtype, name=f"target_{t}")
                f = _broadcast(factor, shape, dtype, f"factor_target_{t}",
                               site.accumulator_shape)
                raw.Mul(x=target, y=f, name=f"scaled_{t}")
    return graph.as_graph_def()


def _all_reduce(sums: tf.Tensor, rows: tf.Tensor, site: PlannedSite, reduce):
    """Σ g² and the rows over every replica (tf.distribute): this replica's sums and row
    count, packed into one vector, summed over the replicas (``reduce``: None for an ``AddN``
    of the local replicas' vectors, fed as ``peer_J``; else a collective template)."""
    f32, raw = tf.float32, tf.raw_ops
    size = int(np.prod(site.accumulator_shape, dtype=np.int64))
    flat = tf.constant([-1], tf.int32, name="flat")
    packed = raw.ConcatV2(values=[raw.Reshape(tensor=sums, shape=flat),
                                  raw.Reshape(tensor=rows, shape=tf.constant([1], tf.int32))],
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
    total_sums, total_rows = raw.SplitV(
        value=total, size_splits=tf.constant([size, 1], tf.int64), axis=tf.constant(0, tf.int32),
        num_split=2, name="split")
    return (raw.Reshape(tensor=total_sums, shape=tf.constant(list(site.accumulator_shape),
                                                             tf.int32), name="total_sums"),
            raw.Reshape(tensor=total_rows, shape=tf.constant([], tf.int32), name="total_rows"))


# --- splicing --------------------------------------------------------------------------------

def _splice(traced: graph_pb2.GraphDef, site: PlannedSite, device: str,
            loop_stats: dict[int, tuple[str, str]], reduce=None) -> list[node_def_pb2.NodeDef]:
    """Rename the traced nodes into the site's scope and wire the graph's tensors in (g, the
    loop statistics, the post-scaled targets, the loss scale, the other replicas'
    statistics, the collective's group)."""
    prefix = inserted_name(site.index, "")
    outside: dict[str, str] = {}
    for k, a in enumerate(site.applications):
        if a.loop is None:
            outside[f"g_{k}"] = tensor_name(a.g)
        else:
            outside[f"loop_sum_{k}"], outside[f"loop_count_{k}"] = loop_stats[k]
    for t, (target, _, _) in enumerate(_targets(site)):
        outside[f"target_{t}"] = target
    if site.loss_scale is not None:
        outside[_LOSS_SCALE] = site.loss_scale
    for h in HYPERPARAMETERS:
        outside[f"{_HYPER}{h}"] = hyperparameter_name(h)
    for j, peer in enumerate(site.peers):
        if j != site.replica:
            outside[f"peer_{j}"] = inserted_name(peer, "packed")
    if reduce is not None:
        outside.update(group_size=reduce.group_size, group_key=reduce.group_key)
        if reduce.ordering_token:
            outside["ordering_token"] = reduce.ordering_token
    outside = {k: input_string(v) for k, v in outside.items()}

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


def _clone_chain(editor: GraphEditor, chain: tuple[str, ...], source: str,
                 prefix: str) -> list[node_def_pb2.NodeDef]:
    """Copies of the gradient's position ops ``chain`` (``SpaceToBatchND``, ``Reshape``) that
    read ``source`` (ĝ of the layer output) instead of g: P then reads ĝ at its own positions,
    while every other reader of g keeps g."""
    clones = []
    for i, name in enumerate(chain):
        new = node_def_pb2.NodeDef()
        new.CopyFrom(editor.node(name))
        new.name = f"{prefix}/{i}"
        new.input[0] = source
        map_colocation(new, lambda n: None)
        clones.append(new)
        source = new.name
    return clones


def _wants_one_pass(site: PlannedSite, one_pass: bool) -> bool:
    """The one-pass reduction where it saves memory traffic: sites whose σ' has more than two
    axes (convolutions, sequences). A rank-2 g (a Dense layer's [batch, units]) is small next
    to its MatMul, and Square + Mean is fewer ops there."""
    return one_pass and any(len(a.dims) > 2 for a in site.applications)


def apply_surgery(graph_def: graph_pb2.GraphDef, plan: Plan, options: Options,
                  one_pass: bool = True) -> Rewritten:
    """Insert every site's accumulator and T, reroute P's g input to ĝ (pre-scaled
    applications) or P's output to P·f (post-scaled ones), and validate — every change
    through a ``GraphEditor``, whose log the result carries. ``one_pass``: the default
    runtime's reduction (else the portable one)."""
    editor = GraphEditor(graph_def)
    loop_stats = _grow_loops(editor, plan, one_pass)
    accumulators, scaled_targets = [], {}
    templates = collective_templates(graph_def) if plan.distribution else {}
    instance_keys: dict[tuple[int, ...], int] = {}
    traces: dict[tuple, graph_pb2.GraphDef] = {}
    for site in plan.sites:
        first = site.applications[0]
        device = editor.node(first.loop.backward_loop if first.loop else first.match.grad_op).device
        reduce = (reduce_for(plan.distribution, templates, device, instance_keys, site.peers)
                  if site.peers else None)
        traced = _trace_site(site, options, _wants_one_pass(site, one_pass), traces, reduce)
        stats_of = {k: loop_stats[(site.index, k)]
                    for k, a in enumerate(site.applications) if a.loop is not None}
        editor.insert(_splice(traced, site, device, stats_of, reduce), site.index)
        accumulators.append(Accumulator(
            placeholder=inserted_name(site.index, "accumulator"), shape=site.accumulator_shape,
            site=site.index, key=site.key, group=site.peers[0] if site.peers else site.index,
            replica=site.replica))
        for k, a in enumerate(site.applications):
            if a.loop is None and not (a.post_scaled and options.transform == "svgd"):
                _reroute_g(editor, site, k, a)
        if options.transform == "svgd":
            for t, (target, _, _) in enumerate(_targets(site)):
                scaled_targets[input_string(target)] = (inserted_name(site.index, f"scaled_{t}"),
                                                        site.index)
    editor.reroute_readers(scaled_targets)
    hyperparameters = _insert_hyperparameters(editor) if plan.sites else {}
    marker = json.dumps({"tool": "svgd-rewrite", "format": FORMAT_VERSION,
                         "options": options.to_dict(), "sites": len(plan.sites)}, sort_keys=True)
    marker_node = node_def_pb2.NodeDef(name=MARKER_NODE, op="Const")
    marker_node.attr["dtype"].type = tf.string.as_datatype_enum
    marker_node.attr["value"].tensor.CopyFrom(
        tf.make_tensor_proto(np.array(marker.encode(), dtype=object)))
    editor.insert([marker_node])
    check_rewritten_graph(editor.graph_def, editor.log, plan.tensor_types)
    return Rewritten(graph_def=editor.graph_def, accumulators=accumulators, edits=editor.log,
                     options=options, hyperparameters=hyperparameters)


def _insert_hyperparameters(editor: GraphEditor) -> dict[str, str]:
    """One float32 scalar input per hyperparameter (s, ρ, ε), read by every site's T; the
    step feeds them each call (a TF1 front end gives them defaults)."""
    nodes = {}
    for h in HYPERPARAMETERS:
        node = node_def_pb2.NodeDef(name=hyperparameter_name(h), op="Placeholder")
        node.attr["dtype"].type = tf.float32.as_datatype_enum
        node.attr["shape"].shape.CopyFrom(tf.TensorShape([]).as_proto())
        nodes[h] = node
    editor.insert(list(nodes.values()))
    return {h: node.name for h, node in nodes.items()}


def _grow_loops(editor: GraphEditor, plan: Plan, one_pass: bool) -> dict:
    """The gradient loops' new statistics loop variables, per (site, application)."""
    stats, keys = [], []
    for site in plan.sites:
        for k, a in enumerate(site.applications):
            if a.loop is not None:
                keys.append((site.index, k))
                stats.append(LoopStatistic(
                    backward_loop=a.loop.backward_loop, g=a.loop.g, g_dtype=a.g_dtype,
                    reduce_axes=a.reduce_axes, accumulator_shape=site.accumulator_shape,
                    one_pass=_wants_one_pass(site, one_pass),
                    name=inserted_name(site.index, f"loop_{k}")))
    if not stats:
        return {}
    outputs = editor.grow_loops(stats, [site for site, _ in keys])
    return {key: outputs[i] for i, key in enumerate(keys)}


def _reroute_g(editor: GraphEditor, site: PlannedSite, k: int, a) -> None:
    """A pre-scaled application: P's g input reads ĝ (through a copy of the gradient's
    position ops when σ' is the layer output past them)."""
    old = parse_input(editor.node(a.match.grad_op).input[a.match.g_slot])
    assert (old[0], old[1]) == a.match.g, "P's g input moved under the rewrite"
    ghat = inserted_name(site.index, f"g_hat_{k}")
    if a.chain:  # ĝ of the layer output, moved to P's positions like g was
        clones = _clone_chain(editor, a.chain, ghat,
                              inserted_name(site.index, f"positions_{k}"))
        editor.insert(clones, site.index)
        ghat = clones[-1].name
    editor.reroute(a.match.grad_op, a.match.g_slot, ghat, site.index, k)
