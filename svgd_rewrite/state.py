"""SVGD's training state: one accumulator r per trained variable θ, by name.

r belongs to θ, not to a traced step: every trace that uses θ (a new input structure, a short
last batch, ``train_on_batch``, another rewrite of the same step) reads and updates the same
variable, created once outside any ``tf.function`` and named after θ (``svgd/<key>``). A
checkpoint saves each accumulator under its key (``accumulators/<key>``), like an optimizer
slot, so that restoring matches by name, never by position; values restored before the
accumulator exists (a checkpoint read before the first step) are kept and applied when it is
created. Beside the accumulators live s, ρ and ε (one value each per step, read by every
site) and the number of steps trained, so that a schedule resumes where it stopped.
"""
from __future__ import annotations

import re
from typing import Any

import numpy as np
import tensorflow as tf

from .errors import UnsupportedError

_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.\-/]")


class _Plain:
    """Untracked bookkeeping (values restored early, notes): kept out of checkpoints."""

    def __init__(self):
        self.pending: dict[str, np.ndarray] = {}
        self.set_values: dict[str, float] = {}  # the options' s, ρ, ε last set
        self.notes: list[str] = []
        self.restored = False


class AccumulatorState(tf.Module):
    """The accumulators of one model or step, keyed by θ.

    ``accumulators`` maps each key to its float32, non-trainable ``tf.Variable`` (mirrored
    under a ``tf.distribute`` strategy). Pass the same state to several rewrites
    (``svgd_rewrite.rewrite(step, state=other.state)``) to share r between them.
    """

    def __init__(self, name: str = "svgd_state"):
        super().__init__(name=name)
        self.accumulators: dict[str, tf.Variable] = {}
        self.hyperparameter_variables: dict[str, tf.Variable] = {}
        self.steps: tf.Variable | None = None
        self._plain = _Plain()

    def __repr__(self) -> str:
        return f"<svgd_rewrite.AccumulatorState: {len(self.accumulators)} accumulator(s)>"

    @property
    def notes(self) -> list[str]:
        """What restoring found (values of another shape, state saved before SVGD)."""
        return list(self._plain.notes)

    def variable(self, key: str, shape: tuple[int, ...], strategy: Any = None) -> tf.Variable:
        """θ's accumulator: the existing one, or a new one of zeros (created eagerly, or
        under ``init_scope`` inside a trace; mirrored under ``strategy``)."""
        existing = self.accumulators.get(key)
        if existing is not None:
            if tuple(existing.shape) != tuple(shape):
                raise UnsupportedError(
                    f"the accumulator of {key} has shape {tuple(existing.shape)} but this "
                    f"step needs {tuple(shape)} (σ''s shape changed between traces): use "
                    "granularity='channel', whose r has one entry per output channel")
            return existing
        name = "svgd/" + _NAME_CHARS.sub("_", key)
        with tf.init_scope():
            variable = _new_variable(tf.zeros(shape, tf.float32), name, strategy)
            pending = self._plain.pending.pop(key, None)
            if pending is not None:
                if tuple(pending.shape) == tuple(shape):
                    variable.assign(pending)
                else:
                    self._plain.notes.append(
                        f"the restored accumulator of {key} has shape {tuple(pending.shape)}, "
                        f"this step's {tuple(shape)}: it starts at zero")
        self.accumulators[key] = variable
        return variable

    def hyperparameters(self, values: dict[str, float], strategy: Any = None
                        ) -> dict[str, tf.Variable]:
        """s, ρ, ε (``scale``, ``rho``, ``epsilon``) as float32 scalar variables, set to
        ``values`` (a new step's options at step 0), and ``steps``, the number of steps this
        state has trained (int64): what a rewritten step reads each call. Assign them between
        steps to change them (``state.hyperparameter_variables["scale"].assign(0.05)``)."""
        with tf.init_scope():
            for name, value in values.items():
                existing = self.hyperparameter_variables.get(name)
                if existing is None:
                    self.hyperparameter_variables[name] = _new_variable(
                        tf.constant(value, tf.float32), f"svgd/{name}", strategy)
                elif self._plain.set_values.get(name) != value:  # new options, not a retrace
                    existing.assign(value)
                self._plain.set_values[name] = value
            if self.steps is None:
                self.steps = _new_variable(tf.constant(0, tf.int64), "svgd/steps", strategy)
        return dict(self.hyperparameter_variables)

    def assign_values(self, values: dict[str, np.ndarray]) -> None:
        """Restore accumulators by key; keys not created yet are applied at creation."""
        self._plain.restored = True
        for key, value in values.items():
            value = np.asarray(value, np.float32)
            existing = self.accumulators.get(key)
            if existing is None:
                self._plain.pending[key] = value
            elif tuple(existing.shape) == value.shape:
                existing.assign(value)
            else:
                self._plain.notes.append(
                    f"the restored accumulator of {key} has shape {value.shape}, the model's "
                    f"{tuple(existing.shape)}: it keeps its value")

    def values(self) -> dict[str, np.ndarray]:
        """Every accumulator's value by key."""
        return {k: np.asarray(v.numpy()) for k, v in self.accumulators.items()}


def _new_variable(initial: tf.Tensor, name: str, strategy: Any) -> tf.Variable:
    """A non-trainable variable (mirrored under ``strategy``, written once for all
    replicas)."""
    if strategy is None:
        return tf.Variable(initial, trainable=False, name=name)
    with strategy.scope():
        return tf.Variable(initial, trainable=False, name=name,
                           synchronization=tf.VariableSynchronization.ON_WRITE,
                           aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
