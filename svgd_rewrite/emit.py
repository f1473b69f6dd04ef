"""Emit stage: the rewritten GraphDef as a callable ``tf.Module`` (the ``SVGDStep``).

The GraphDef is imported inside a new ``tf.function`` with ``tf.graph_util.import_graph_def``;
inputs, captured tensors and accumulator handles are fed through ``input_map`` (their
placeholders are dropped first). Automatic control dependencies make every imported stateful
op (variable updates, accumulator assigns) run, in the original order.
"""
from __future__ import annotations

from typing import Any

import tensorflow as tf
from tensorflow.core.framework import graph_pb2

from .load import LoadedStep
from .report import Report
from .rewrite import Rewritten
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
        fed = set(self.input_placeholders) | {n for n, _ in self.captures} | set(
            self.accumulator_placeholders)
        self.import_graph_def = graph_pb2.GraphDef()
        self.import_graph_def.CopyFrom(rewritten.graph_def)
        del self.import_graph_def.node[:]
        self.import_graph_def.node.extend(n for n in rewritten.graph_def.node if n.name not in fed)


class SVGDStep(tf.Module):
    """A training step rewritten to train with virtual gradients.

    Call it like the original step. ``accumulators`` are the new r variables (float32),
    ``report`` says what was transformed, ``graph_def`` is the rewritten GraphDef. The
    original step's variables are shared, not copied (``step_variables``).
    """

    def __init__(self, loaded: LoadedStep, rewritten: Rewritten, report: Report,
                 name: str = "svgd_step"):
        super().__init__(name=name)
        with self.name_scope:
            self.accumulators = [
                tf.Variable(tf.zeros(a.shape, tf.float32), trainable=False,
                            name=f"svgd_accumulator_{a.site}")
                for a in rewritten.accumulators
            ]
        self.step_variables = [loaded.variable_objects[p] for p in sorted(loaded.variable_objects)]
        self.report = report
        self.graph_def = rewritten.graph_def
        self._wiring = _Wiring(loaded, rewritten)
        self.function = tf.function(self._run, input_signature=loaded.input_signature,
                                    autograph=False)

    def __call__(self, *args) -> Any:
        return self.function(*args)

    def _run(self, *args) -> Any:
        w = self._wiring
        flat = tf.nest.flatten(args, expand_composites=True)
        input_map = {f"{name}:0": t for name, t in zip(w.input_placeholders, flat)}
        for name, external in w.captures:
            input_map[f"{name}:0"] = capture(external)
        for name, acc in zip(w.accumulator_placeholders, self.accumulators):
            input_map[f"{name}:0"] = capture(acc.handle)
        outs = tf.graph_util.import_graph_def(
            w.import_graph_def, input_map=input_map, return_elements=w.output_tensors,
            name=IMPORT_SCOPE)
        by_name = dict(zip(w.output_tensors, outs))
        leaves = tf.nest.flatten(w.structured_outputs, expand_composites=True)
        leaves = [by_name[t.name] if isinstance(t, tf.Tensor) else t for t in leaves]
        return tf.nest.pack_sequence_as(w.structured_outputs, leaves, expand_composites=True)
