"""Inline function calls (``PartitionedCall`` / ``StatefulPartitionedCall``) into a GraphDef.

A step that calls an inner ``tf.function`` keeps its forward ops in ``__forward_…`` library
functions and their gradients in ``__backward_…`` ones: a site and its P can sit in different
functions. Inlining makes the graph flat. Functions called from control flow (``While``/``If``
bodies) are left alone; the analysis reports the θ consumers inside them as unreachable.
"""
from __future__ import annotations

import logging

from tensorflow.core.framework import attr_value_pb2, graph_pb2, node_def_pb2

from .ir import parse_input
from .tf_compat import function_def_to_graph_def

log = logging.getLogger(__name__)

CALL_OPS = frozenset({"PartitionedCall", "StatefulPartitionedCall"})
MAX_DEPTH = 32


def _call_target(node: node_def_pb2.NodeDef) -> str:
    return node.attr["f"].func.name


def inline_calls(graph_def: graph_pb2.GraphDef) -> graph_pb2.GraphDef:
    """Return a copy of ``graph_def`` with every top-level function call inlined, recursively."""
    gd = graph_pb2.GraphDef()
    gd.CopyFrom(graph_def)
    functions = {f.signature.name: f for f in gd.library.function}
    for _ in range(MAX_DEPTH):
        calls = [n for n in gd.node if n.op in CALL_OPS and _call_target(n) in functions]
        if not calls:
            return gd
        for call in calls:
            _inline_one(gd, call.name, functions[_call_target(call)])
    raise ValueError(f"function calls nested deeper than {MAX_DEPTH} levels")


def _inline_one(gd: graph_pb2.GraphDef, call_name: str, fdef) -> None:
    call = next(n for n in gd.node if n.name == call_name)
    body, nested_to_flat = function_def_to_graph_def(fdef)
    prefix = call_name + "/"
    data_in = [i for i in call.input if not i.startswith("^")]
    control_in = [i for i in call.input if i.startswith("^")]
    arg_names = [a.name for a in fdef.signature.input_arg]
    body_names = {n.name for n in body.node}

    def rename(inp: str) -> str:
        src, port, control = parse_input(inp)
        if control:
            return "^" + prefix + src
        return prefix + (src if port == 0 else f"{src}:{port}")

    new_nodes = []
    for node in body.node:
        new = node_def_pb2.NodeDef()
        new.CopyFrom(node)
        new.name = prefix + node.name
        if node.name in arg_names:
            # The argument placeholder becomes an Identity of the caller's input.
            k = arg_names.index(node.name)
            dtype = node.attr["dtype"].type
            new.op = "Identity"
            new.ClearField("attr")
            new.attr["T"].type = dtype
            del new.input[:]
            new.input.append(data_in[k])
            new.input.extend(control_in)
        else:
            inputs = [rename(i) for i in node.input]
            del new.input[:]
            new.input.extend(inputs)
            if not any(not i.startswith("^") for i in node.input):
                new.input.extend(control_in)
        if "_class" in new.attr:
            del new.attr["_class"]
        new_nodes.append(new)

    # The call node becomes an IdentityN over the function's results, so that consumers of
    # "call:k" keep working; it also waits for the function's stateful ops (control_ret).
    out_types = list(call.attr["Tout"].list.type)
    results = []
    for arg in fdef.signature.output_arg:
        nested = fdef.ret[arg.name]
        flat = nested_to_flat.get(nested, nested)
        results.append(rename(flat))
    control_rets = sorted("^" + prefix + fdef.control_ret[k] for k in fdef.control_ret)
    control_rets = [c for c in control_rets if c[1 + len(prefix):] in body_names]
    if results:
        replacement = node_def_pb2.NodeDef(name=call_name, op="IdentityN")
        replacement.input.extend(results + control_rets)
        replacement.attr["T"].CopyFrom(attr_value_pb2.AttrValue(
            list=attr_value_pb2.AttrValue.ListValue(type=out_types)))
    else:
        replacement = node_def_pb2.NodeDef(name=call_name, op="NoOp")
        replacement.input.extend(control_rets or control_in)
    idx = next(i for i, n in enumerate(gd.node) if n.name == call_name)
    del gd.node[idx]
    gd.node.extend(new_nodes)
    gd.node.append(replacement)
    log.debug("inlined %s (%s): %d nodes", call_name, fdef.signature.name, len(new_nodes))
