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
