"""Keras ``compile()`` / ``fit()``: train with virtual gradients in the loop most users have.

``enable(model)`` replaces the step that ``fit`` and ``train_on_batch`` run by its SVGD
rewrite. Keras builds its train function around ``model.train_step`` (the public point of
customisation): ``enable`` sets an instance ``train_step`` that, the first time ``fit`` traces
it for a structure of data (tuples, dicts, sample weights), traces the model's own
``train_step`` (a user's override included) for that data, rewrites it, and calls the
rewritten step; a new structure is traced and rewritten anew. Everything around the step
(``steps_per_execution``, ``jit_compile``, callbacks, logs, metrics, ``evaluate``,
``predict``) stays Keras's own.

Under ``MirroredStrategy`` the per-replica ``train_step`` cannot be rewritten alone (SVGD's
statistics span the replicas): ``enable`` replaces ``make_train_function`` instead, and the
train function runs the rewrite of the whole replicated step Keras would run
(``strategy.run`` of the model's ``train_step``, then Keras's per-replica reduction).

The accumulators are training state: they are variables of the model's optimizer (of the
innermost one under a ``LossScaleOptimizer``), so ``save_weights``, ``BackupAndRestore``,
``ModelCheckpoint`` and ``tf.train.Checkpoint`` carry them. A backup restored before the first
step (as ``BackupAndRestore`` does) is applied to the accumulators when the step creates them.
"""
from __future__ import annotations

import weakref
from typing import Any, Iterable

import keras
import numpy as np
import tensorflow as tf

from .emit import SVGDStep
from .errors import SVGDRewriteError, UnsupportedError
from .frontend import rewrite_with
from .load import load_concrete_function
from .options import Options, make_options
from .report import Report

__all__ = ["enable", "disable", "VirtualGradients", "KerasSVGD"]

_MIRRORED = (tf.distribute.MirroredStrategy,)  # fit under MultiWorkerMirroredStrategy: untested
_ENABLED: "weakref.WeakKeyDictionary[keras.Model, KerasSVGD]" = weakref.WeakKeyDictionary()


def _innermost(optimizer):
    while hasattr(optimizer, "inner_optimizer"):
        optimizer = optimizer.inner_optimizer
    return optimizer


class _KerasFrontEnd:
    """The step Keras runs, traced by ``KerasSVGD``, in; an ``SVGDStep`` whose accumulators
    are optimizer variables out."""

    accumulator_kind = "placeholder"

    def __init__(self, concrete_function, make_accumulator):
        self.concrete_function, self.make_accumulator = concrete_function, make_accumulator

    def load(self):
        loaded = load_concrete_function(self.concrete_function)
        loaded.jit_compile = None  # Keras's own function carries jit_compile around the step
        return loaded

    def finish(self, loaded, rewritten, report) -> SVGDStep:
        return SVGDStep(loaded, rewritten, report, name="svgd_keras_step",
                        make_accumulator=self.make_accumulator)


class KerasSVGD:
    """What ``enable`` returns: the rewritten steps of one model, one per data structure.

    ``report`` is the report of the step traced last (``None`` until ``fit`` or
    ``train_on_batch`` has traced one); ``accumulators`` are the optimizer variables that
    hold r, in site order, over every traced step.
    """

    def __init__(self, model: keras.Model, options: Options):
        self.model = model
        self.options = options
        self.steps: dict[str, SVGDStep] = {}
        self.report: Report | None = None
        self.accumulators: list = []
        self._pending: dict[int, np.ndarray] = {}  # restored before the accumulator existed
        self._own_variables = 0  # optimizer variables that are not accumulators, at the load

    def __repr__(self) -> str:
        return (f"<svgd_rewrite.keras.KerasSVGD of {self.model.name!r}: "
                f"{len(self.steps)} traced step(s)>")

    def __str__(self) -> str:
        return str(self.report) if self.report is not None else (
            "svgd-rewrite: enabled; the step is rewritten when fit/train_on_batch first traces it")

    # --- the train step Keras calls --------------------------------------------------------
    def train_step(self, data):
        if tf.executing_eagerly():
            raise SVGDRewriteError("the model runs eagerly (run_eagerly=True): there is no graph "
                                   "to rewrite; compile it with run_eagerly=False")
        leaves = tf.nest.flatten(data)
        tensors = [t for t in leaves if t is not None]
        if not all(tf.is_tensor(t) and not isinstance(t, tf.SparseTensor) for t in tensors):
            raise SVGDRewriteError("fit's data holds non-dense tensors (sparse or ragged): "
                                   "feed dense tensors to train with virtual gradients")
        specs = tuple(tf.TensorSpec(t.shape, t.dtype, name=f"data_{k}")
                      for k, t in enumerate(tensors))
        structure = tf.nest.map_structure(lambda t: None if t is None else "tensor", data)
        key = repr((structure, specs))
        step = self.steps.get(key)
        if step is None:  # traced in its own graph (not under init_scope: it stops tapes)
            step = self._rewrite(structure, specs)
            self.steps[key] = step
            self.report = step.report
        return step.function(*tensors)

    def _rewrite(self, structure, specs) -> SVGDStep:
        model = self.model
        original = type(model).train_step  # the class's step: a user's override included

        def flat_step(*tensors):
            it = iter(tensors)
            data = tf.nest.map_structure(lambda t: None if t is None else next(it), structure)
            return original(model, data)

        traced = tf.function(flat_step, input_signature=specs, autograph=False)
        return rewrite_with(_KerasFrontEnd(traced.get_concrete_function(),
                                           self._make_accumulator), self.options)

    # --- under tf.distribute: the replicated step Keras builds, rewritten whole -------------
    def make_distributed_train_function(self, force: bool = False):
        """Keras's ``make_train_function`` under a strategy with several replicas: the train
        function runs, per batch, the rewrite of the step Keras would run (``strategy.run`` of
        the model's own ``train_step``, then the per-replica reduction)."""
        model = self.model
        if model.train_function is not None and not force:
            return model.train_function

        def train_function(iterator):
            outputs = None
            if not isinstance(iterator, (tf.data.Iterator, tf.distribute.DistributedIterator)):
                for _, data in zip(range(model.steps_per_execution), iterator):  # a list
                    outputs = self._distributed_step(data)
                return outputs
            for _ in range(model.steps_per_execution):
                optional = iterator.get_next_as_optional()
                if not optional.has_value():
                    if outputs is None:
                        raise StopIteration
                    break
                outputs = self._distributed_step(optional.get_value())
            return outputs

        model.train_function = train_function
        return train_function

    def _distributed_step(self, data):
        specs = tf.nest.map_structure(
            lambda v: getattr(v, "_type_spec", None) or tf.type_spec_from_value(v), data)
        key = "distributed:" + repr(specs)
        step = self.steps.get(key)
        if step is None:
            step = self._rewrite_distributed(data)
            self.steps[key] = step
            self.report = step.report
        return step(data)

    def _rewrite_distributed(self, data) -> SVGDStep:
        from keras.src.backend.tensorflow.trainer import reduce_per_replica

        model = self.model
        strategy = model.distribute_strategy
        original = type(model).train_step

        def replicated(data):
            outputs = strategy.run(lambda d: original(model, d), args=(data,))
            return reduce_per_replica(outputs, strategy, reduction="auto")

        cf = tf.function(replicated, autograph=False).get_concrete_function(data)
        return rewrite_with(_KerasFrontEnd(cf, self._make_accumulator), self.options)

    def _make_accumulator(self, shape: tuple[int, ...], name: str):
        with self.model.distribute_strategy.scope():
            variable = _innermost(self.model.optimizer).add_variable(
                shape=shape, initializer="zeros", dtype="float32", name=name)
        index = len(self.accumulators)
        self.accumulators.append(variable)
        if index in self._pending:
            variable.assign(self._pending.pop(index))
        return variable

    # --- restoring a backup taken with the accumulators ------------------------------------
    def load_optimizer_variables(self, store) -> None:
        """The optimizer's ``load_own_variables``: a store that holds accumulators not created
        yet (a backup restored before the first step) loads the optimizer's own variables and
        keeps the accumulators' values for when the step creates them."""
        optimizer = self.model.optimizer
        variables = list(optimizer.variables)
        if len(store.keys()) == len(variables):
            for i, v in enumerate(variables):
                v.assign(store[str(i)])
            return
        own = len(variables) - len(self.accumulators)
        extra = len(store.keys()) - own
        if extra <= 0 or own <= 0:
            type(optimizer).load_own_variables(optimizer, store)  # Keras's own warning
            return
        for i, v in enumerate(variables[:own]):
            v.assign(store[str(i)])
        for j in range(extra):
            value = np.asarray(store[str(own + j)])
            if j < len(self.accumulators):
                self.accumulators[j].assign(value)
            else:
                self._pending[j] = value


def enable(model: keras.Model, *, scale: float = Options.scale, rho: float = Options.rho,
           epsilon: float = Options.epsilon, ops: Iterable[str] | None = None,
           granularity: str = Options.granularity) -> KerasSVGD:
    """Make ``model.fit`` / ``train_on_batch`` train with virtual gradients.

    The model must be compiled (any optimizer, loss, metrics, ``loss_weights``,
    ``steps_per_execution``, ``jit_compile``, mixed precision) and not run eagerly. Returns a
    ``KerasSVGD`` whose ``report`` is filled when the step is first traced. Enabling twice
    replaces the options.
    """
    options = make_options(scale=scale, rho=rho, epsilon=epsilon, ops=ops,
                           granularity=granularity)
    if not isinstance(model, keras.Model):
        raise SVGDRewriteError(f"expected a keras.Model, got {type(model).__name__}")
    if getattr(model, "optimizer", None) is None or not getattr(model, "compiled", False):
        raise SVGDRewriteError("the model is not compiled: call model.compile(optimizer=..., "
                               "loss=...) before svgd_rewrite.keras.enable")
    if model.run_eagerly:
        raise SVGDRewriteError("the model runs eagerly (run_eagerly=True): there is no graph to "
                               "rewrite; compile it with run_eagerly=False")
    strategy = model.distribute_strategy
    if strategy.num_replicas_in_sync > 1 and not isinstance(strategy, _MIRRORED):
        raise UnsupportedError(f"the model is built under {type(strategy).__name__}: fit under "
                               "it is not supported; supported: MirroredStrategy (for a custom "
                               "loop also MultiWorkerMirroredStrategy)")
    if model in _ENABLED:
        disable(model)
    state = KerasSVGD(model, options)
    _ENABLED[model] = state
    model.train_step = state.train_step
    if strategy.num_replicas_in_sync > 1:  # the whole replicated step is rewritten
        model.make_train_function = state.make_distributed_train_function
    model.optimizer.load_own_variables = state.load_optimizer_variables
    model.train_function = None  # rebuilt around the new step on the next fit
    return state


def disable(model: keras.Model) -> None:
    """Back to the compiled model's plain step (the accumulators stay optimizer variables)."""
    state = _ENABLED.pop(model, None)
    if state is None:
        return
    for obj, attr in ((model, "train_step"), (model, "make_train_function"),
                      (model.optimizer, "load_own_variables")):
        if attr in vars(obj):
            object.__delattr__(obj, attr)
    model.train_function = None


def enabled(model: keras.Model) -> KerasSVGD | None:
    """The ``KerasSVGD`` of an enabled model, else ``None``."""
    return _ENABLED.get(model)


class VirtualGradients(keras.callbacks.Callback):
    """``model.fit(..., callbacks=[VirtualGradients(scale=0.1)])``: enable for this fit.

    ``state`` is the ``KerasSVGD`` (its ``report`` once the step is traced). The model stays
    enabled after ``fit`` (so a later ``fit`` continues with the same accumulators) unless
    ``disable_at_end=True``.
    """

    def __init__(self, *, scale: float = Options.scale, rho: float = Options.rho,
                 epsilon: float = Options.epsilon, ops: Iterable[str] | None = None,
                 granularity: str = Options.granularity,
                 disable_at_end: bool = False):
        super().__init__()
        self.options: dict[str, Any] = dict(scale=scale, rho=rho, epsilon=epsilon, ops=ops,
                                            granularity=granularity)
        make_options(**self.options)  # validate now, not at the start of fit
        self.disable_at_end = disable_at_end
        self.state: KerasSVGD | None = None

    def on_train_begin(self, logs=None):
        self.state = enabled(self.model) or enable(self.model, **self.options)
        self.model.make_train_function(force=True)

    def on_train_end(self, logs=None):
        if self.disable_at_end:
            disable(self.model)
