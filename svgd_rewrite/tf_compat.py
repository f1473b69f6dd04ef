"""The few TensorFlow internals the tool needs, wrapped in one place (each covered by a test)."""
from __future__ import annotations

import tensorflow as tf
from tensorflow.core.framework import function_pb2, graph_pb2


def function_def_to_graph_def(fdef: function_pb2.FunctionDef) -> tuple[graph_pb2.GraphDef, dict[str, str]]:
    """A FunctionDef as a GraphDef plus the map from its nested tensor names to flat names."""
    from tensorflow.python.framework import function_def_to_graph

    return function_def_to_graph.function_def_to_graph_def(fdef)


def traced_concrete_functions(fn) -> list:
    """The concrete functions a ``tf.function`` has traced so far."""
    lister = getattr(fn, "_list_all_concrete_functions", None)
    if lister is None:
        return []
    return list(lister())


def capture(tensor: tf.Tensor) -> tf.Tensor:
    """Capture an outer tensor (a variable handle, say) into the FuncGraph being traced."""
    graph = tf.compat.v1.get_default_graph()
    return graph.capture(tensor)


def capture_call_time_value(closure, spec: tf.TensorSpec) -> tf.Tensor:
    """A placeholder of the FuncGraph being traced that ``closure()`` feeds at every call
    (tf.distribute's collective instance keys are captured this way)."""
    graph = tf.compat.v1.get_default_graph()

    def value():  # a deferred capture's own closure returns its tensors as a list
        out = closure()
        return out[0] if isinstance(out, (list, tuple)) else out

    return graph.capture_call_time_value(value, spec)


def distributed_container(handle) -> tuple[object, int] | None:
    """The ``tf.distribute`` variable a captured resource handle is a component of, and the
    component's index in its ``values``; None for a plain variable."""
    ref = getattr(handle, "_distributed_container", None)
    container = ref() if callable(ref) else None
    if container is None:
        return None
    for k, component in enumerate(getattr(container, "values", ())):
        if getattr(component, "handle", None) is handle:
            return container, k
    return None


def strategy_of(container) -> object | None:
    """The ``tf.distribute.Strategy`` a distributed variable belongs to."""
    return getattr(container, "_distribute_strategy", None)


def op_output_names(node) -> list[tuple[str, int]]:
    """The FunctionDef names of a node's outputs, per flat output index: ``(arg, k)`` means
    ``node:arg:k`` (list outputs are expanded by their length attribute)."""
    from tensorflow.python.framework import op_def_registry

    op_def = op_def_registry.get(node.op)
    if op_def is None:
        raise ValueError(f"unknown op type {node.op!r}")
    out: list[tuple[str, int]] = []
    for arg in op_def.output_arg:
        if arg.number_attr:
            n = node.attr[arg.number_attr].i
        elif arg.type_list_attr:
            n = len(node.attr[arg.type_list_attr].list.type)
        else:
            n = 1
        out += [(arg.name, k) for k in range(n)]
    return out


def output_dtype(node, index: int) -> int:
    """The ``DataType`` enum of a node's flat output ``index``, from its op's definition."""
    from tensorflow.python.framework import op_def_registry

    op_def = op_def_registry.get(node.op)
    if op_def is None:
        raise ValueError(f"unknown op type {node.op!r}")
    for arg in op_def.output_arg:
        if arg.type_list_attr:
            types = list(node.attr[arg.type_list_attr].list.type)
        else:
            dtype = node.attr[arg.type_attr].type if arg.type_attr else arg.type
            types = [dtype] * (node.attr[arg.number_attr].i if arg.number_attr else 1)
        if index < len(types):
            return types[index]
        index -= len(types)
    raise ValueError(f"{node.name!r} ({node.op}) has no output {index}")


def register_functions(library) -> None:
    """Register a GraphDef library's functions with the eager runtime (the loop bodies the
    rewrite creates): a GraphDef imported into a ``tf.function`` brings its library into the
    graph but not into the runtime that instantiates a ``While``'s body when it is lowered."""
    from tensorflow.python.eager import context

    ctx = context.context()
    for fdef in library.function:
        if not ctx.has_function(fdef.signature.name):
            ctx.add_function_def(fdef)


def checkpoint_restored(trackable) -> bool:
    """Whether a TensorFlow checkpoint has restored ``trackable`` (also a restoration deferred
    until its variables exist, as when a dependency is added after ``restore``)."""
    return getattr(trackable, "_self_update_uid", -1) >= 0


def write_summaries(writer, step: tf.Tensor, serialized: tf.Tensor):
    """Write serialized ``Summary`` protos (a string vector: one event each) at ``step`` with
    a ``tf.summary`` writer, not under its ``as_default``: that context flushes the writer
    as it exits, so a traced function using it would flush (write the file) at every call."""
    resource = getattr(writer, "_resource", None)
    if resource is None:
        with writer.as_default(step=step):
            return tf.summary.experimental.write_raw_pb(serialized)
    return tf.raw_ops.WriteRawProtoSummary(writer=resource, step=step, tensor=serialized)
