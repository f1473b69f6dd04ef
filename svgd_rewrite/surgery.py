"""Rewrite stage: the GraphDef surgery of the paper's Figure 6 (right), one site at a time.

For each site, with g = ∂J/∂σ' at P's g input::

    r_new = ρ·r + (1-ρ)·mean(g ⊙ g)      (float32; the mean over the batch, or over every
                                          axis but the channel for granularity="channel",
                                          as ‖g‖² / count: one pass over g)
    r    ← r_new
    ĝ    = g · (s·rsqrt(r_new + ε))       (reshaped to broadcast, cast back to g's dtype)
    P's g input ← ĝ                       (every other consumer of g keeps g)

With ``transform="identity"`` ĝ = g and the accumulators are still updated. Accumulators
enter as resource placeholders ``svgd_rewrite/site_K/accumulator``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import graph_pb2, node_def_pb2

from .ir import parse_input, tensor_name
from .load import MARKER_NODE
from .options import Options
from .plan import Plan, PlannedSite

SCOPE = "svgd_rewrite"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Accumulator:
    """An accumulator r: the placeholder its handle is fed through, and its shape."""

    placeholder: str
    shape: tuple[int, ...]
    site: int


@dataclass
class Rewritten:
    graph_def: graph_pb2.GraphDef
    accumulators: list[Accumulator]


def _node(name: str, op: str, inputs: list[str], **attrs) -> node_def_pb2.NodeDef:
    node = node_def_pb2.NodeDef(name=name, op=op)
    node.input.extend(inputs)
    for key, value in sorted(attrs.items()):
        attr = node.attr[key]
        if isinstance(value, tf.DType):
            attr.type = value.as_datatype_enum
        elif isinstance(value, bool):
            attr.b = value
        elif isinstance(value, bytes):
            attr.s = value
        elif isinstance(value, tf.TensorShape):
            attr.shape.CopyFrom(value.as_proto())
        elif isinstance(value, np.ndarray):
            attr.tensor.CopyFrom(tf.make_tensor_proto(value))
        else:
            raise TypeError(f"unsupported attr {key}={value!r}")
    return node


def _const(name: str, value, dtype) -> node_def_pb2.NodeDef:
    array = np.asarray(value, dtype=dtype)
    return _node(name, "Const", [], dtype=tf.as_dtype(array.dtype), value=array)


def _accumulator_nodes(p: str, shape: tuple[int, ...], kind: str) -> list[node_def_pb2.NodeDef]:
    """The accumulator r, its initializer (graph variables) and its read ``p + "r"``.

    ``kind``: ``placeholder`` (a resource handle fed on import: TF2 functions), ``resource``
    (``VarHandleOp``) or ``ref`` (``VariableV2``), like the graph's own variables.
    """
    f32, acc = tf.float32, p + "accumulator"
    if kind == "placeholder":
        return [_node(acc, "Placeholder", [], dtype=tf.resource, shape=tf.TensorShape([])),
                _node(p + "r", "ReadVariableOp", [acc], dtype=f32)]
    zeros = _const(p + "zeros", np.zeros(shape, np.float32), np.float32)
    if kind == "resource":
        return [_node(acc, "VarHandleOp", [], dtype=f32, shape=tf.TensorShape(shape),
                      shared_name=acc.encode(), container=b""), zeros,
                _node(p + "initializer", "AssignVariableOp", [acc, p + "zeros"], dtype=f32),
                _node(p + "r", "ReadVariableOp", [acc], dtype=f32)]
    return [_node(acc, "VariableV2", [], dtype=f32, shape=tf.TensorShape(shape),
                  shared_name=b"", container=b""), zeros,
            _node(p + "initializer", "Assign", [acc, p + "zeros"], T=f32, validate_shape=True,
                  use_locking=True),
            _node(p + "r", "Identity", [acc], T=f32)]


def _site_nodes(site: PlannedSite, options: Options,
                kind: str) -> tuple[list[node_def_pb2.NodeDef], str, Accumulator]:
    """The inserted nodes of one site, and the name of ĝ."""
    p = f"{SCOPE}/site_{site.index}/"
    f32 = tf.float32
    g = tensor_name(site.match.g)
    nodes = _accumulator_nodes(p, site.accumulator_shape, kind)
    g32 = g
    if site.g_dtype != f32:
        g32 = p + "g_float32"
        nodes.append(_node(g32, "Cast", [g], SrcT=site.g_dtype, DstT=f32, Truncate=False))
    # mean(g ⊙ g) in one pass over g: ‖g‖² along the reduced axes over their element count
    nodes += [
        _const(p + "reduce_axes", list(site.reduce_axes), np.int32),
        _node(p + "g_norm", "EuclideanNorm", [g32, p + "reduce_axes"], T=f32, Tidx=tf.int32,
              keep_dims=False),
        _node(p + "g_size", "Size", [g32], T=f32, out_type=tf.int32),
        _node(p + "r_size", "Size", [p + "g_norm"], T=f32, out_type=tf.int32),
        _node(p + "g_size_float", "Cast", [p + "g_size"], SrcT=tf.int32, DstT=f32,
              Truncate=False),
        _node(p + "r_size_float", "Cast", [p + "r_size"], SrcT=tf.int32, DstT=f32,
              Truncate=False),
        _node(p + "count", "RealDiv", [p + "g_size_float", p + "r_size_float"], T=f32),
        _node(p + "sum_g_squared", "Square", [p + "g_norm"], T=f32),
    ]
    if site.loss_scale is not None:  # the unscaled gradient's square: divide by scale²
        nodes += [_node(p + "loss_scale_squared", "Square", [site.loss_scale], T=f32),
                  _node(p + "count_scaled", "Mul", [p + "count", p + "loss_scale_squared"],
                        T=f32)]
    count = p + ("count_scaled" if site.loss_scale is not None else "count")
    nodes += [
        _node(p + "mean_g_squared", "RealDiv", [p + "sum_g_squared", count], T=f32),
        _const(p + "rho", options.rho, np.float32),
        _const(p + "one_minus_rho", 1.0 - options.rho, np.float32),
        _node(p + "r_decayed", "Mul", [p + "r", p + "rho"], T=f32),
        _node(p + "r_fresh", "Mul", [p + "mean_g_squared", p + "one_minus_rho"], T=f32),
    ]
    r_new = p + "r_new"
    if site.guard_finite:  # an overflowing float16 step leaves r as it was
        nodes += [
            _node(p + "r_candidate", "AddV2", [p + "r_decayed", p + "r_fresh"], T=f32),
            _node(p + "is_finite", "IsFinite", [p + "r_candidate"], T=f32),
            _const(p + "all_axes", list(range(len(site.accumulator_shape))), np.int32),
            _node(p + "all_finite", "All", [p + "is_finite", p + "all_axes"], Tidx=tf.int32,
                  keep_dims=False),
            _node(r_new, "SelectV2", [p + "all_finite", p + "r_candidate", p + "r"], T=f32),
        ]
    else:
        nodes.append(_node(r_new, "AddV2", [p + "r_decayed", p + "r_fresh"], T=f32))
    if kind == "ref":
        nodes.append(_node(p + "assign_r", "Assign", [p + "accumulator", r_new], T=f32,
                           validate_shape=True, use_locking=True))
    else:
        nodes.append(_node(p + "assign_r", "AssignVariableOp", [p + "accumulator", r_new],
                           dtype=f32))
    if options.transform == "identity":
        ghat = p + "g_hat"
        nodes.append(_node(ghat, "Identity", [g], T=site.g_dtype))
    else:
        nodes += [
            _const(p + "epsilon", options.epsilon, np.float32),
            _node(p + "r_plus_epsilon", "AddV2", [p + "r_new", p + "epsilon"], T=f32),
            _node(p + "rsqrt", "Rsqrt", [p + "r_plus_epsilon"], T=f32),
            _const(p + "scale", options.scale, np.float32),
            _node(p + "factor", "Mul", [p + "rsqrt", p + "scale"], T=f32),
        ]
        factor = p + "factor"
        if site.broadcast_shape is not None:
            nodes += [
                _const(p + "broadcast_shape", list(site.broadcast_shape), np.int32),
                _node(p + "factor_broadcast", "Reshape", [factor, p + "broadcast_shape"],
                      T=f32, Tshape=tf.int32),
            ]
            factor = p + "factor_broadcast"
        if site.g_dtype != f32:
            nodes.append(_node(p + "factor_cast", "Cast", [factor], SrcT=f32, DstT=site.g_dtype,
                               Truncate=False))
            factor = p + "factor_cast"
        ghat = p + "g_hat"
        nodes.append(_node(ghat, "Mul", [g, factor], T=site.g_dtype))
    acc = Accumulator(placeholder=p + "accumulator", shape=site.accumulator_shape, site=site.index)
    return nodes, ghat, acc


def apply_surgery(graph_def: graph_pb2.GraphDef, plan: Plan, options: Options,
                  accumulator_kind: str = "placeholder") -> Rewritten:
    """Insert every site's accumulator and scaling nodes and reroute P's g input to ĝ."""
    out = graph_pb2.GraphDef()
    out.CopyFrom(graph_def)
    by_name = {n.name: n for n in out.node}
    accumulators = []
    for site in plan.sites:
        nodes, ghat, acc = _site_nodes(site, options, accumulator_kind)
        out.node.extend(nodes)
        accumulators.append(acc)
        p_node = by_name[site.match.grad_op]
        old = parse_input(p_node.input[site.match.g_slot])
        assert (old[0], old[1]) == site.match.g, "P's g input moved under the rewrite"
        p_node.input[site.match.g_slot] = ghat
    marker = json.dumps({"tool": "svgd-rewrite", "format": FORMAT_VERSION,
                         "options": options.to_dict(), "sites": len(plan.sites)}, sort_keys=True)
    out.node.append(_node(MARKER_NODE, "Const", [], dtype=tf.string,
                          value=np.array(marker.encode(), dtype=object)))
    return Rewritten(graph_def=out, accumulators=accumulators)
