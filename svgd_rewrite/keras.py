"""Keras ``compile()`` / ``fit()``: train with virtual gradients in the loop most users have.

``enable(model)`` replaces the step that ``fit`` and ``train_on_batch`` run by its SVGD
rewrite. Keras builds its train function around ``model.train_step`` (the public point of
customisation): ``enable`` sets an instance ``train_step`` that, the first time Keras traces
it for a structure of data (tuples, dicts, sample weights) and a compiled state (optimizer,
trainable variables, loss, metrics), traces the model's own ``train_step`` (a user's
override included) for that data, rewrites it, and calls the rewritten step. A new structure
or a new ``compile()`` is traced and rewritten anew; everything around the step
(``steps_per_execution``, ``jit_compile``, callbacks, logs, metrics, ``evaluate``,
``predict``) stays Keras's own.

Under ``MirroredStrategy`` the per-replica ``train_step`` cannot be rewritten alone (SVGD's
statistics span the replicas): ``enable`` replaces ``make_train_function`` instead, and the
train function runs the rewrite of the whole replicated step Keras would run
(``strategy.run`` of the model's ``train_step``, then Keras's per-replica reduction).

The accumulators are the model's training state: one per trained variable θ, in an
``AccumulatorState`` reachable as ``model.svgd_accumulators``, keyed by θ's position among
``model.weights`` and its name (``weights.3.kernel``) — structural, like Keras's own weight
files, so a model built in another process matches. Every trace shares them. Keras's savers
(``save_weights``/``load_weights``, ``ModelCheckpoint``, ``BackupAndRestore``, ``model.save``
+ ``keras.models.load_model``) store them under ``svgd_accumulators`` by key, and a
``tf.train.Checkpoint(model=...)`` tracks them by key; values restored before the
accumulators exist are applied when the first step creates them.
"""
from __future__ import annotations

import warnings
import weakref
from typing import Any
from urllib.parse import quote, unquote

import keras
import numpy as np
import tensorflow as tf

from .step import SVGDStep
from .errors import NoSitesError, SVGDRewriteError, UnsupportedError
from .frontend import rewrite_with
from .load import load_concrete_function
from .options import Options, takes_options
from .report import Report
from .state import AccumulatorState
from .tf_compat import distributed_container, keras_saveable_base

KerasSaveable = keras_saveable_base()

__all__ = ["enable", "disable", "enabled", "VirtualGradients", "KerasSVGD"]

_MIRRORED = (tf.distribute.MirroredStrategy,)  # fit under MultiWorkerMirroredStrategy: untested
_ENABLED: "weakref.WeakKeyDictionary[keras.Model, KerasSVGD]" = weakref.WeakKeyDictionary()
_STATE_ATTR = "svgd_accumulators"


class ModelAccumulators(AccumulatorState, KerasSaveable):
    """A model's accumulators, saved by Keras's savers under ``svgd_accumulators`` by key."""

    def __init__(self):
        super().__init__(name="svgd_accumulators")

    @property
    def name(self):  # no name: Keras then writes no group for a model without accumulators
        return None

    def _obj_type(self) -> str:
        return "Loss"  # the smallest skip list of Keras's saver: it walks no attribute of ours

    def save_own_variables(self, store) -> None:
        for key, value in sorted(self.values().items()):
            store[quote(key, safe="")] = value

    def load_own_variables(self, store) -> None:
        keys = list(store.keys())
        if not keys:
            self._plain.notes.append("the restored state holds no SVGD accumulators (saved "
                                     "before enable): they start at zero")
            self._plain.restored = True
            return
        self.assign_values({unquote(k): np.asarray(store[k]) for k in keys})


class _StateSlot:
    """``model.svgd_accumulators``: the model's ``ModelAccumulators``, created on first use.

    Installed on ``keras.Model`` when this module is imported, so that Keras's savers reach
    the accumulators of any model — also while ``keras.models.load_model`` restores one that
    ``enable`` has not seen yet (its values wait there for ``enable``)."""

    def __get__(self, model, owner=None):
        if model is None:
            return self
        state = model.__dict__.get("_svgd_state")
        if state is None:
            state = ModelAccumulators()
            object.__setattr__(model, "_svgd_state", state)
        return state


if not isinstance(getattr(keras.Model, _STATE_ATTR, None), _StateSlot):
    setattr(keras.Model, _STATE_ATTR, _StateSlot())


def _keras_variables(model: keras.Model) -> dict[int, tuple[str, Any]]:
    """id of each weight's backing ``tf.Variable`` (mirrored or not) -> (state key, weight)."""
    out = {}
    for i, w in enumerate(model.weights):
        value = getattr(w, "value", w)
        out[id(value)] = (f"weights.{i}.{w.name}", w)
    return out


class _KerasFrontEnd:
    """The step Keras runs, traced by ``KerasSVGD``, in; an ``SVGDStep`` over the model's
    accumulators out."""

    def __init__(self, concrete_function, model: keras.Model):
        self.concrete_function, self.model = concrete_function, model

    def load(self):
        loaded = load_concrete_function(self.concrete_function)
        loaded.jit_compile = None  # Keras's own function carries jit_compile around the step
        loaded.xla = bool(self.model.jit_compile)
        weights = _keras_variables(self.model)
        trainable = {id(getattr(w, "value", w)) for w in self.model.trainable_weights}
        for p, v in loaded.call.variable_objects.items():
            mirrored = distributed_container(v.handle)
            owner = mirrored[0] if mirrored else v
            if id(owner) in weights:
                loaded.variable_keys[p] = weights[id(owner)][0]
                info = loaded.variables[p]
                if info.trainable and id(owner) not in trainable:  # a frozen layer's weight
                    from dataclasses import replace
                    loaded.variables[p] = replace(info, trainable=False)
        return loaded

    def finish(self, loaded, rewritten, report) -> SVGDStep:
        return SVGDStep(loaded, rewritten, report, name="svgd_keras_step",
                        state=getattr(self.model, _STATE_ATTR))


class KerasSVGD:
    """What ``enable`` returns: the rewritten steps of one model.

    ``report`` is the report of the step traced last (``None`` until ``fit`` or
    ``train_on_batch`` has traced one); ``accumulators`` are the model's r variables (one per
    trained variable); ``state`` is the ``AccumulatorState`` holding them by key; ``steps``
    the rewritten steps by traced data structure and compiled state; ``notes`` what restoring
    found.
    """

    def __init__(self, model: keras.Model, options: Options):
        self.model = model
        self.options = options
        self.replaced = ""  # set when enable replaced an earlier enable's options
        self.steps: dict[str, SVGDStep] = {}
        self.report: Report | None = None
        self._generation: tuple | None = None

    def __repr__(self) -> str:
        return (f"<svgd_rewrite.keras.KerasSVGD of {self.model.name!r}: "
                f"{len(self.steps)} traced step(s), {len(self.accumulators)} accumulator(s)>")

    def __str__(self) -> str:
        return str(self.report) if self.report is not None else (
            "svgd-rewrite: enabled; the step is rewritten when fit/train_on_batch first traces it")

    def _note_replaced(self) -> None:
        if self.replaced and self.replaced not in self.report.warnings:
            self.report.warnings.append(self.replaced)

    @property
    def state(self) -> AccumulatorState:
        return getattr(self.model, _STATE_ATTR)

    @property
    def accumulators(self) -> list:
        return list(self.state.accumulators.values())

    @property
    def notes(self) -> list[str]:
        """What restoring found, and whether this enable replaced earlier options."""
        return ([self.replaced] if self.replaced else []) + self.state.notes

    def _current(self) -> tuple:
        """What a rewritten step depends on besides the data: the compiled optimizer, loss and
        metrics and the trainable variables (a new ``compile()`` or unfreezing changes it)."""
        m = self.model
        generation = (id(m.optimizer), id(getattr(m, "_compile_loss", None)),
                      id(getattr(m, "_compile_metrics", None)),
                      tuple(id(getattr(w, "value", w)) for w in m.trainable_weights))
        if generation != self._generation:
            self.steps.clear()
            self._generation = generation
        return generation

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
        self._current()
        key = repr((structure, specs))
        step = self.steps.get(key)
        if step is None:  # traced in its own graph (not under init_scope: it stops tapes)
            step = self._rewrite(structure, specs)
            self.steps[key] = step
            self.report = step.report
            self._note_replaced()
        return step.function(*tensors)

    def _rewrite(self, structure, specs) -> SVGDStep:
        model = self.model
        original = type(model).train_step  # the class's step: a user's override included

        def flat_step(*tensors):
            it = iter(tensors)
            data = tf.nest.map_structure(lambda t: None if t is None else next(it), structure)
            return original(model, data)

        traced = tf.function(flat_step, input_signature=specs, autograph=False)
        return rewrite_with(_KerasFrontEnd(traced.get_concrete_function(), model),
                            self.options)

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
        self._current()
        key = "distributed:" + repr(specs)
        step = self.steps.get(key)
        if step is None:
            step = self._rewrite_distributed(data)
            self.steps[key] = step
            self.report = step.report
            self._note_replaced()
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
        return rewrite_with(_KerasFrontEnd(cf, model), self.options)


def _is_tf_keras(model) -> bool:
    return type(model).__module__.split(".")[0] in ("tf_keras", "keras_2") or any(
        c.__module__.startswith("tf_keras.") for c in type(model).__mro__)


def _check_model(model) -> None:
    if _is_tf_keras(model):
        raise UnsupportedError(
            "svgd_rewrite.keras supports Keras 3 models; this is a tf_keras model "
            "(TF_USE_LEGACY_KERAS=1): rewrite its training step with svgd_rewrite.rewrite "
            "instead (README: tf_keras)")
    if not isinstance(model, keras.Model):
        raise SVGDRewriteError(f"expected a keras.Model, got {type(model).__name__}")
    if getattr(model, "optimizer", None) is None or not getattr(model, "compiled", False):
        raise SVGDRewriteError("the model is not compiled: call model.compile(optimizer=..., "
                               "loss=...) before svgd_rewrite.keras.enable")
    if model.built and not any(len(w.shape) >= 2 for w in model.trainable_weights):
        raise NoSitesError("the model has no trainable kernel (no trainable weight of rank 2 "
                           "or more): there is nothing to give virtual gradients; enable a "
                           "model with Dense/Conv/attention layers")
    if model.run_eagerly:
        raise SVGDRewriteError("the model runs eagerly (run_eagerly=True): there is no graph to "
                               "rewrite; compile it with run_eagerly=False")
    strategy = model.distribute_strategy
    if strategy.num_replicas_in_sync > 1 and not isinstance(strategy, _MIRRORED):
        raise UnsupportedError(f"the model is built under {type(strategy).__name__}: fit under "
                               "it is not supported; supported: MirroredStrategy (for a custom "
                               "loop also MultiWorkerMirroredStrategy)")


@takes_options
def enable(model: keras.Model, *, options: Options) -> KerasSVGD:
    """Make ``model.fit`` / ``train_on_batch`` train with virtual gradients.

    ``model``: a compiled Keras 3 model (any optimizer, loss, metrics, ``loss_weights``,
    ``steps_per_execution``, ``jit_compile``, mixed precision; ``MirroredStrategy``), not run
    eagerly. The options are ``svgd_rewrite.rewrite``'s (``scale``: 0.01 for convolutional
    or sequence models, 0.001 for VGG-like nets; ``transform="identity"``: the same surgery
    with ĝ = g, so that ``fit`` trains exactly as without ``enable`` — a check).

    Returns a ``KerasSVGD``: ``report`` (filled when the step is first traced),
    ``accumulators``, ``state``, ``notes``. Enabling again replaces the options and keeps
    the accumulators. Raises ``SVGDRewriteError`` (not compiled, ``run_eagerly=True``, not a
    Keras 3 model), ``UnsupportedError`` (a strategy other than ``MirroredStrategy``, a
    tf_keras model) or ``InvalidOptionError``, each with one line.
{options}"""
    return _enable(model, options)


def _enable(model: keras.Model, options: Options) -> KerasSVGD:
    _check_model(model)
    previous = _ENABLED.get(model)
    if previous is not None:
        disable(model)
    state = KerasSVGD(model, options)
    if previous is not None and previous.options != options:
        changed = {k: (v, getattr(options, k)) for k, v in previous.options.to_dict().items()
                   if getattr(options, k) != previous.options.to_dict()[k]
                   and not (k == "ops" and list(options.ops) == v)}
        state.replaced = ("enable: the options were replaced ("
                          + ", ".join(f"{k} {a!r} → {b!r}" for k, (a, b) in changed.items())
                          + "); the accumulators are kept")
    _ENABLED[model] = state
    accumulators = getattr(model, _STATE_ATTR)
    model._track_trackable(accumulators, name=_STATE_ATTR, overwrite=True)  # tf.train.Checkpoint
    object.__setattr__(model, "train_step", state.train_step)
    if model.distribute_strategy.num_replicas_in_sync > 1:  # the whole replicated step
        object.__setattr__(model, "make_train_function", state.make_distributed_train_function)
    model.train_function = None  # rebuilt around the new step on the next fit
    iterations = getattr(model.optimizer, "iterations", None)
    if (not accumulators.accumulators and not accumulators._plain.restored
            and iterations is not None and int(iterations.numpy()) > 0):
        warnings.warn("svgd_rewrite: the optimizer has already taken steps but no SVGD "
                      "accumulators were restored: if this model was saved with SVGD enabled, "
                      "import svgd_rewrite.keras before keras.models.load_model", stacklevel=2)
    return state


def disable(model: keras.Model) -> None:
    """Back to the compiled model's plain step; the accumulators stay (``enable`` again
    continues with them). Called from a callback during ``fit``, it takes effect at the next
    step."""
    state = _ENABLED.pop(model, None)
    if state is None:
        return
    for attr in ("train_step", "make_train_function"):
        if attr in vars(model):
            object.__delattr__(model, attr)
    if model.train_function is not None:  # rebuilt now: fit calls it again at the next step
        model.train_function = None
        model.make_train_function(force=True)


def enabled(model: keras.Model) -> KerasSVGD | None:
    """The ``KerasSVGD`` of an enabled model, else ``None``."""
    return _ENABLED.get(model)


class VirtualGradients(keras.callbacks.Callback):
    """``model.fit(..., callbacks=[VirtualGradients(scale=0.01)])``: train this ``fit`` with
    virtual gradients.

    Takes ``enable``'s options — ``scale``, ``rho``, ``epsilon``, ``ops``, ``granularity``,
    ``transform``, ``pooling``, ``post_scale``, ``portable`` (see ``enable``) — checked when
    the callback is made. ``keep`` (default False): leave the model enabled after
    ``fit`` (a later ``fit`` then continues with SVGD); by default the model is back to its
    plain step when ``fit`` ends (the accumulators stay for the next enable). ``state`` is the
    ``KerasSVGD`` (its ``report`` once the step is traced). A model that is not compiled, or
    not a Keras 3 model, is refused with one line when ``fit`` starts.
    """

    @takes_options
    def __init__(self, *, keep: bool = False, options: Options):
        super().__init__()
        self.options = options  # validated now, not at the start of fit
        self.keep = keep
        self.state: KerasSVGD | None = None
        self._was_enabled = False

    # tf_keras's callback list asks these of every callback: answer them so that a tf_keras
    # model reaches on_train_begin, which refuses it with one line.
    def _implements_train_batch_hooks(self) -> bool:
        return False

    def _implements_test_batch_hooks(self) -> bool:
        return False

    def _implements_predict_batch_hooks(self) -> bool:
        return False

    def on_train_begin(self, logs=None):
        self._was_enabled = enabled(self.model) is not None
        self.state = enabled(self.model) or _enable(self.model, self.options)
        self.model.make_train_function(force=True)

    def on_train_end(self, logs=None):
        if not self.keep and not self._was_enabled:
            disable(self.model)
