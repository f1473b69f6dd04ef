"""Surgery for sites inside ``While`` loops: the gradient loop carries two new loop variables
per P (Σ g² over the axes r reduces, and the row count), so that r is updated once after the
loop from every timestep's g (matching: ``loop_match``)."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import function_pb2, graph_pb2

from .ir import parse_input
from .tf_compat import op_output_names
from .transform import sum_of_squares


@dataclass(frozen=True)
class LoopStatistic:
    """One P inside a gradient loop whose g statistics the loop must carry out."""

    backward_loop: str
    g: str  # P's g input in FunctionDef syntax
    g_dtype: tf.DType
    reduce_axes: tuple[int, ...]
    accumulator_shape: tuple[int, ...]
    one_pass: bool
    name: str  # a unique prefix for the new nodes


def add_statistics(graph_def: graph_pb2.GraphDef,
                   stats: list[LoopStatistic]) -> dict[int, tuple[str, str]]:
    """Give each gradient loop the loop variables Σ g² and the row count per statistic (new
    body and cond functions, new loop inputs). Returns, per statistic index, the outer tensor
    names of the two sums after the loop."""
    by_name = {n.name: n for n in graph_def.node}
    library = {f.signature.name: f for f in graph_def.library.function}
    out: dict[int, tuple[str, str]] = {}
    by_loop: dict[str, list[int]] = {}
    for k, st in enumerate(stats):
        by_loop.setdefault(st.backward_loop, []).append(k)
    for loop, indices in sorted(by_loop.items()):
        node = by_name[loop]
        body = function_pb2.FunctionDef()
        body.CopyFrom(library[node.attr["body"].func.name])
        cond = function_pb2.FunctionDef()
        cond.CopyFrom(library[node.attr["cond"].func.name])
        n_out = len(node.attr["T"].list.type)
        suffix = "_svgd_" + hashlib.sha1(loop.encode()).hexdigest()[:10]
        body.signature.name += suffix
        cond.signature.name += suffix
        data = [i for i in node.input if not i.startswith("^")]
        control = [i for i in node.input if i.startswith("^")]
        new_inputs = []
        for j, k in enumerate(indices):
            st = stats[k]
            sum_arg, count_arg = f"svgd_sum_{j}", f"svgd_count_{j}"
            for fn in (body, cond):
                for arg in (sum_arg, count_arg):
                    fn.signature.input_arg.add(name=arg, type=tf.float32.as_datatype_enum)
                position = len(fn.signature.input_arg) - 2
                for offset, shape in ((0, st.accumulator_shape), (1, ())):
                    attr = fn.arg_attr[position + offset].attr["_output_shapes"]
                    attr.list.shape.add().CopyFrom(tf.TensorShape(shape).as_proto())
            new_sum, new_count = _statistic_nodes(body, st, sum_arg, count_arg)
            for arg, value in ((sum_arg, new_sum), (count_arg, new_count)):
                body.signature.output_arg.add(name=arg + "_out", type=tf.float32.as_datatype_enum)
                body.ret[arg + "_out"] = value
            init_sum = graph_def.node.add(name=f"{st.name}/sum_init", op="Const")
            init_sum.attr["dtype"].type = tf.float32.as_datatype_enum
            init_sum.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(
                np.zeros(st.accumulator_shape, np.float32)))
            init_count = graph_def.node.add(name=f"{st.name}/count_init", op="Const")
            init_count.attr["dtype"].type = tf.float32.as_datatype_enum
            init_count.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(np.float32(0)))
            for init in (init_sum, init_count):
                init.device = node.device
            new_inputs += [init_sum.name, init_count.name]
            out[k] = (f"{loop}:{n_out + 2 * j}", f"{loop}:{n_out + 2 * j + 1}")
            node.attr["T"].list.type.extend([tf.float32.as_datatype_enum] * 2)
            node.attr["output_shapes"].list.shape.add().CopyFrom(
                tf.TensorShape(st.accumulator_shape).as_proto())
            node.attr["output_shapes"].list.shape.add().CopyFrom(tf.TensorShape(()).as_proto())
        del node.input[:]
        node.input.extend(data + new_inputs + control)
        if "_num_original_outputs" in node.attr:
            node.attr["_num_original_outputs"].i = len(node.attr["T"].list.type)
        node.attr["body"].func.name = body.signature.name
        node.attr["cond"].func.name = cond.signature.name
        graph_def.library.function.extend([body, cond])
    return out


def _statistic_nodes(body: function_pb2.FunctionDef, st: LoopStatistic, sum_arg: str,
                     count_arg: str) -> tuple[str, str]:
    """Append to ``body`` the nodes adding this iteration's Σ g² and rows to the two
    arguments; return the two new values (FunctionDef syntax)."""
    graph = tf.Graph()
    with graph.as_default():
        g = tf.compat.v1.placeholder(st.g_dtype, name="g")
        s_in = tf.compat.v1.placeholder(tf.float32, name="sum_in")
        n_in = tf.compat.v1.placeholder(tf.float32, name="count_in")
        sums, count = sum_of_squares(g, st.g_dtype, st.reduce_axes, st.accumulator_shape,
                                     st.one_pass)
        tf.raw_ops.AddV2(x=s_in, y=sums, name="sum_out")
        tf.raw_ops.AddV2(x=n_in, y=count, name="count_out")
    traced = graph.as_graph_def()
    outside = {"g": st.g, "sum_in": sum_arg, "count_in": count_arg}
    prefix = st.name + "/"
    names = {n.name: n for n in traced.node}

    def ref(inp: str) -> str:
        src, port, control = parse_input(inp)
        if src in outside:
            return outside[src]
        outputs = op_output_names(names[src])
        name, index = outputs[port]
        return ("^" if control else "") + f"{prefix}{src}:{name}:{index}"

    for n in traced.node:
        if n.name in outside:
            continue
        new = body.node_def.add()
        new.CopyFrom(n)
        new.name = prefix + n.name
        del new.input[:]
        new.input.extend(ref(i) for i in n.input)
        new.ClearField("device")
    return ref("sum_out:0"), ref("count_out:0")
