"""Emit stage: the rewritten GraphDef as a callable ``tf.Module`` (the ``SVGDStep``).

The GraphDef is imported inside a new ``tf.function`` with ``tf.graph_util.import_graph_def``;
inputs, captured tensors and accumulator handles are fed through ``input_map`` (their
placeholders are dropped first). Automatic control dependencies make every imported stateful
op (variable updates, accumulator assigns) run, in the original order.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable

import tensorflow as tf
from tensorflow.core.framework import graph_pb2

from .errors import UnsupportedError
from .ir import map_colocation
from .load import LoadedStep
from .report import Report
from .surgery import Rewritten
from .tf_compat import capture

IMPORT_SCOPE = "svgd"


class _Wiring:
    """Plain (untracked) state of an SVGDStep: what to feed where on import."""

    def __init__(self, loaded: LoadedStep, rewritten: Rewritten):
        self.input_placeholders = list(loaded.input_placeholders)
        self.captures = list(loaded.captures)
        self.accumulator_placeholders = [a.placeholder for a in rewritten.accumulators]
        self.output_tensors = list(loaded.output_tensors)
        self.structured_outputs = loaded.structured_outputs
        self.n_positional = loaded.n_positional
        self.keyword_names = list(loaded.keyword_names)
        fed = set(self.input_placeholders) | {n for n, _ in self.captures} | set(
            self.accumulator_placeholders)
        self.import_graph_def = graph_pb2.GraphDef()
        self.import_graph_def.CopyFrom(rewritten.graph_def)
        del self.import_graph_def.node[:]
        self.import_graph_def.node.extend(n for n in rewritten.graph_def.node if n.name not in fed)
        _drop_colocation_with(self.import_graph_def, fed)


def _drop_colocation_with(graph_def: graph_pb2.GraphDef, removed: set[str]) -> None:
    """Colocation constraints (``_class: loc:@name``) that name a node fed through
    ``input_map`` (and so not imported) are dropped: TensorFlow refuses them on import."""
    for node in graph_def.node:
        map_colocation(node, lambda name: None if name in removed else name)


def _with_parameters(run, loaded: LoadedStep):
    """``run(*values)`` with a signature naming each argument like the original step's.

    Positional arguments are named after their TensorSpec (``arg_K`` when that is no valid,
    unique identifier); keyword arguments keep their names, so signatures keep their keys.
    """
    names: list[str] = []
    for k, spec in enumerate(loaded.input_signature[:loaded.n_positional]):
        name = getattr(spec, "name", None)
        names.append(name if name and name.isidentifier() and name not in names else f"arg_{k}")
    names += list(loaded.keyword_names)
    if len(set(names)) != len(names):
        names = [f"arg_{k}" for k in range(loaded.n_positional)] + list(loaded.keyword_names)

    def step(*values):
        return run(*values)

    step.__signature__ = inspect.Signature(
        [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in names])
    return step


def _zeros_variable(shape: tuple[int, ...], name: str) -> tf.Variable:
    return tf.Variable(tf.zeros(shape, tf.float32), trainable=False, name=name)


def _handle(variable) -> tf.Tensor:
    """The resource handle of a ``tf.Variable`` or of a Keras variable."""
    return variable.handle if isinstance(variable, tf.Variable) else variable.value.handle


def _refuse_replicas() -> None:
    """tf.distribute with several replicas needs accumulators per replica and an all-reduce of
    mean(g²), which this version does not build: refuse rather than train wrong."""
    if tf.distribute.has_strategy() or tf.distribute.in_cross_replica_context():
        strategy = tf.distribute.get_strategy()
        if strategy.num_replicas_in_sync > 1:
            raise UnsupportedError(
                f"the rewritten step runs under {type(strategy).__name__} with "
                f"{strategy.num_replicas_in_sync} replicas: tf.distribute is not supported yet "
                "(single-device steps only)")


class SVGDStep(tf.Module):
    """A training step rewritten to train with virtual gradients.

    Call it like the original step. ``accumulators`` are the new r variables (float32),
    ``report`` says what was transformed, ``graph_def`` is the rewritten GraphDef. The
    original step's variables are shared, not copied (``step_variables``).
    """

    def __init__(self, loaded: LoadedStep, rewritten: Rewritten, report: Report,
                 name: str = "svgd_step", make_accumulator: Callable | None = None):
        """``make_accumulator(shape, name)`` creates each accumulator (default: a float32
        ``tf.Variable`` of zeros); Keras passes its optimizer's ``add_variable``."""
        super().__init__(name=name)
        make = make_accumulator or _zeros_variable
        with self.name_scope, tf.init_scope():
            self.accumulators = [make(a.shape, f"svgd_accumulator_{a.site}")
                                 for a in rewritten.accumulators]
        self.step_variables = [loaded.variable_objects[p] for p in sorted(loaded.variable_objects)]
        self.report = report
        self.graph_def = rewritten.graph_def
        self.original_graph_def = loaded.graph_def
        self.variable_infos = dict(loaded.variables)
        self.accumulator_placeholders = {a.placeholder: a.shape for a in rewritten.accumulators}
        self._wiring = _Wiring(loaded, rewritten)
        self.function = tf.function(_with_parameters(self._run, loaded),
                                    input_signature=loaded.input_signature, autograph=False,
                                    jit_compile=loaded.jit_compile)

    def __call__(self, *args) -> Any:
        return self.function(*args)

    def _run(self, *values) -> Any:
        _refuse_replicas()
        w = self._wiring
        args = values[:w.n_positional]
        kwargs = dict(zip(w.keyword_names, values[w.n_positional:]))
        flat = tf.nest.flatten((args, kwargs), expand_composites=True)
        input_map = {f"{name}:0": t for name, t in zip(w.input_placeholders, flat)}
        for name, external in w.captures:
            input_map[f"{name}:0"] = capture(external)
        for name, acc in zip(w.accumulator_placeholders, self.accumulators):
            input_map[f"{name}:0"] = capture(_handle(acc))
        outs = tf.graph_util.import_graph_def(
            w.import_graph_def, input_map=input_map, return_elements=w.output_tensors,
            name=IMPORT_SCOPE)
        # Tensor leaves of the structure (TensorSpecs in a restored function) are the flat
        # outputs, in order.
        results = iter(outs)
        leaves = [next(results) if isinstance(t, (tf.Tensor, tf.TensorSpec)) else t
                  for t in tf.nest.flatten(w.structured_outputs, expand_composites=True)]
        return tf.nest.pack_sequence_as(w.structured_outputs, leaves, expand_composites=True)
