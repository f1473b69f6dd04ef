"""Static shapes and dtypes of every tensor of a GraphDef, by importing it into a scratch graph.

Resource placeholders lose their handle shapes in a GraphDef, so each captured variable's
placeholder is mapped to a ``VarHandleOp`` of the variable's shape and dtype first.
"""
from __future__ import annotations

import tensorflow as tf
from tensorflow.core.framework import graph_pb2

from .ir import Tensor, without_large_constants
from .load import VariableInfo

TensorInfo = tuple[tf.DType, tf.TensorShape]


def infer_shapes(graph_def: graph_pb2.GraphDef,
                 variables: dict[str, VariableInfo]) -> dict[Tensor, TensorInfo]:
    """Map each output ``Tensor`` of every node to (dtype, static shape)."""
    scratch = tf.Graph()
    with scratch.as_default():
        input_map = {}
        placeholders = {n.name for n in graph_def.node if n.op == "Placeholder"}
        with tf.name_scope("svgd_shape_probe"):
            for i, (name, info) in enumerate(sorted(variables.items())):
                if name not in placeholders:  # a variable node of a TF1 graph has its shape
                    continue
                input_map[name] = tf.raw_ops.VarHandleOp(
                    dtype=info.dtype, shape=info.shape, shared_name=f"svgd_probe_{i}")
        # import_graph_def adds default attrs to the GraphDef it is given: import a copy (large
        # constants as placeholders of their shape: no second copy of their data)
        tf.graph_util.import_graph_def(without_large_constants(graph_def), input_map=input_map,
                                       name="")
    out: dict[Tensor, TensorInfo] = {}
    names = {n.name for n in graph_def.node}
    for op in scratch.get_operations():
        if op.name not in names:
            continue
        for port, t in enumerate(op.outputs):
            out[Tensor(op.name, port)] = (t.dtype, t.shape)
    return out
