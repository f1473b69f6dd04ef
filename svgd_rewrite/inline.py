"""Inline function calls (``PartitionedCall`` / ``StatefulPartitionedCall``) into a GraphDef.

A step that calls an inner ``tf.function`` keeps its forward ops in ``__forward_…`` library
functions and their gradients in ``__backward_…`` ones: a site and its P can sit in different
functions. Inlining makes the graph flat. Functions called from control flow (``While``/``If``
bodies) are left alone; the analysis reports the θ consumers inside them as unreachable.

The expansion is one recursive pass: each function body is converted once, and every node of
the flat result is written once, so the cost is linear in the size of the inlined graph.
"""
from __future__ import annotations

import logging

import tensorflow as tf
from tensorflow.core.framework import attr_value_pb2, graph_pb2, node_def_pb2

from .errors import LoadError
from .ir import map_colocation, parse_input
from .registry import CALL_OPS
from .tf_compat import function_def_to_graph_def

log = logging.getLogger(__name__)

MAX_DEPTH = 32


def _call_target(node: node_def_pb2.NodeDef) -> str:
    return node.attr["f"].func.name


class _Inliner:
    def __init__(self, graph_def: graph_pb2.GraphDef):
        self.functions = {f.signature.name: f for f in graph_def.library.function}
        self.library, self.versions = graph_def.library, graph_def.versions
        self._scratch: tf.Graph | None = None
        self.bodies: dict[str, tuple[graph_pb2.GraphDef, dict[str, str]]] = {}
        self.out: list[node_def_pb2.NodeDef] = []
        self.count = 0

    def body(self, name: str):
        if name not in self.bodies:
            with self.scratch().as_default():
                self.bodies[name] = function_def_to_graph_def(self.functions[name])
        return self.bodies[name]

    def scratch(self) -> tf.Graph:
        """A graph holding the library (so that calls inside a body resolve)."""
        if self._scratch is None:
            self._scratch = tf.Graph()
            library = graph_pb2.GraphDef()
            library.versions.CopyFrom(self.versions)
            library.library.CopyFrom(self.library)
            with self._scratch.as_default():
                tf.graph_util.import_graph_def(library, name="")
        return self._scratch

    def is_call(self, node: node_def_pb2.NodeDef) -> bool:
        return node.op in CALL_OPS and _call_target(node) in self.functions

    def emit(self, node: node_def_pb2.NodeDef, depth: int, inherited_scope: str = "") -> None:
        """Append ``node`` (already renamed) to the output, expanding it if it is a call
        (``inherited_scope``: the XLA scope of an enclosing must-compile body)."""
        if not self.is_call(node):
            self.out.append(node)
            return
        if depth >= MAX_DEPTH:
            raise LoadError(f"function calls nested deeper than {MAX_DEPTH} levels")
        self.count += 1
        fdef = self.functions[_call_target(node)]
        body, nested_to_flat = self.body(fdef.signature.name)
        prefix = node.name + "/"
        data_in = [i for i in node.input if not i.startswith("^")]
        control_in = [i for i in node.input if i.startswith("^")]
        arg_index = {a.name: k for k, a in enumerate(fdef.signature.input_arg)}
        if len(data_in) != len(arg_index):
            raise LoadError(f"the call {node.name!r} passes {len(data_in)} inputs to "
                            f"{fdef.signature.name!r}, which takes {len(arg_index)}")
        body_names = {n.name for n in body.node}
        # a body that must be compiled (Keras's grouped convolution, whose CPU kernels exist
        # only under XLA) stays one XLA cluster after inlining: its nodes carry the scope
        jit_scope = (inherited_scope or
                     (f"svgd_inlined_jit/{node.name}" if _must_compile(fdef) else ""))

        def rename(inp: str) -> str:
            src, port, control = parse_input(inp)
            if control:
                return "^" + prefix + src
            return prefix + (src if port == 0 else f"{src}:{port}")

        for inner in body.node:
            new = node_def_pb2.NodeDef()
            new.CopyFrom(inner)
            new.name = prefix + inner.name
            if inner.name in arg_index:
                # The argument placeholder becomes an Identity of the caller's input.
                dtype = inner.attr["dtype"].type
                new.op = "Identity"
                new.ClearField("attr")
                new.attr["T"].type = dtype
                del new.input[:]
                new.input.append(data_in[arg_index[inner.name]])
                new.input.extend(control_in)
            else:
                inputs = [rename(i) for i in inner.input]
                del new.input[:]
                new.input.extend(inputs)
                if not any(not i.startswith("^") for i in inner.input):
                    new.input.extend(control_in)
                # colocation follows the inlined names; names outside the body are dropped
                map_colocation(new, lambda n: prefix + n if n in body_names else None)
            if not new.device and node.device:
                new.device = node.device
            if jit_scope:
                _mark_for_xla(new, jit_scope)
            self.emit(new, depth + 1, jit_scope)

        # The call node becomes an IdentityN over the function's results, so that consumers
        # of "call:k" keep working; it also waits for the function's stateful ops (control_ret).
        out_types = list(node.attr["Tout"].list.type)
        results = []
        for arg in fdef.signature.output_arg:
            nested = fdef.ret[arg.name]
            results.append(rename(nested_to_flat.get(nested, nested)))
        control_rets = sorted("^" + prefix + fdef.control_ret[k] for k in fdef.control_ret)
        control_rets = [c for c in control_rets if c[1 + len(prefix):] in body_names]
        if results:
            replacement = node_def_pb2.NodeDef(name=node.name, op="IdentityN")
            replacement.input.extend(results + control_rets)
            replacement.attr["T"].CopyFrom(attr_value_pb2.AttrValue(
                list=attr_value_pb2.AttrValue.ListValue(type=out_types)))
        else:
            replacement = node_def_pb2.NodeDef(name=node.name, op="NoOp")
            replacement.input.extend(control_rets or control_in)
        replacement.device = node.device
        self.out.append(replacement)


def _must_compile(fdef) -> bool:
    attr = fdef.attr.get("_XlaMustCompile")
    return attr is not None and attr.b


def _mark_for_xla(node: node_def_pb2.NodeDef, scope: str) -> None:
    """Ask TensorFlow to compile ``node`` with XLA, in one cluster per ``scope`` (the
    attributes ``tf.xla.experimental.jit_scope`` sets)."""
    node.attr["_XlaCompile"].b = True
    node.attr["_XlaScope"].s = scope.encode()
    node.attr["_XlaInternalScope"].s = scope.encode()


def inline_calls(graph_def: graph_pb2.GraphDef) -> graph_pb2.GraphDef:
    """``graph_def`` with every top-level function call inlined, recursively (a new GraphDef;
    ``graph_def`` itself when it has no call)."""
    inliner = _Inliner(graph_def)
    if not any(inliner.is_call(n) for n in graph_def.node):
        return graph_def  # nothing to inline: no copy (callers never modify it)
    for node in graph_def.node:
        if inliner.is_call(node):
            copy = node_def_pb2.NodeDef()
            copy.CopyFrom(node)
            inliner.emit(copy, 0)
        else:
            inliner.out.append(node)
    gd = graph_pb2.GraphDef()
    gd.versions.CopyFrom(graph_def.versions)
    gd.library.CopyFrom(graph_def.library)
    gd.node.extend(inliner.out)
    log.debug("inlined %d call(s): %d nodes", inliner.count, len(gd.node))
    return gd
