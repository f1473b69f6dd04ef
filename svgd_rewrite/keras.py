"""Keras ``compile()`` / ``fit()``: train with virtual gradients in the loop most users have.

``enable(model)`` replaces the step that ``fit`` and ``train_on_batch`` run by its SVGD
rewrite, for Keras 3 and tf_keras models alike (what differs between them is in
``keras_compat``). Keras builds its train function around ``model.train_step`` (the public
point of customisation): ``enable`` sets an instance ``train_step`` that, the first time Keras
traces it for a structure of data (tuples, dicts, sample weights), traces the model's own
``train_step`` (a user's override included) for that data, rewrites it, and calls the
rewritten step. A new structure, a new ``compile()`` or a change of the trainable variables is
traced and rewritten anew; everything around the step (``steps_per_execution``,
``jit_compile``, callbacks, logs, metrics, ``evaluate``, ``predict``) stays Keras's own.

Under ``MirroredStrategy`` the per-replica ``train_step`` cannot be rewritten alone (SVGD's
statistics span the replicas): ``enable`` replaces ``make_train_function`` instead, and the
train function runs the rewrite of the whole replicated step Keras would run
(``strategy.run`` of the model's ``train_step``, then Keras's per-replica reduction).

The accumulators are the model's training state: one per trained variable θ, in the model's
``ModelAccumulators`` (``model.svgd_accumulators``), keyed by θ's position among
``model.weights`` and its short name (``weights.3.kernel``) — structural, like Keras's own
weight files, so a model built in another process matches. Every trace shares them.
``ModelAccumulators`` says how each saver reaches them; values restored before the
accumulators exist are applied when the first step creates them.
"""
from __future__ import annotations

import itertools
import warnings
import weakref
from dataclasses import replace
from typing import Any, Callable
from urllib.parse import quote, unquote

import keras
import numpy as np
import tensorflow as tf

from . import keras_compat as compat
from .errors import (NoGradientsError, NoSitesError, NoTrainableVariablesError,
                     SVGDRewriteError, UnsupportedError)
from .frontend import rewrite_with
from .load import load_concrete_function
from .options import Options, takes_options
from .report import Report
from .state import AccumulatorState
from .step import SVGDStep
from .tf_compat import checkpoint_restored, distributed_container, write_summaries

__all__ = ["enable", "disable", "enabled", "VirtualGradients", "Diagnostics", "KerasSVGD",
           "ModelAccumulators"]

_MIRRORED = (tf.distribute.MirroredStrategy,)  # fit under MultiWorkerMirroredStrategy: untested
_ENABLED: "weakref.WeakKeyDictionary[Any, KerasSVGD]" = weakref.WeakKeyDictionary()
ATTRIBUTE = "svgd_accumulators"  # the model attribute Keras's savers and checkpoints reach
_SLOT = "_svgd_accumulators"  # where the model keeps it (its instance dictionary)
_NOTHING_TO_REWRITE = (NoTrainableVariablesError, NoGradientsError, NoSitesError)


class ModelAccumulators(AccumulatorState, compat.saveable_base()):
    """A model's accumulators: the one place that says how a model owns them.

    ``ModelAccumulators.of(model)`` is the model's (created on first use, kept in the model's
    instance dictionary). Every saver reaches it as the attribute ``svgd_accumulators``:

    - Keras 3's savers (``save_weights``, ``model.save``, ``load_model``, ``ModelCheckpoint``,
      ``BackupAndRestore``) walk a model's attributes; ``import svgd_rewrite.keras`` adds the
      attribute to ``keras.Model`` — the one hook in Keras, so that ``load_model`` finds it on
      a model ``enable`` has not seen yet (its values wait for ``enable``). It writes a group
      ``svgd_accumulators`` only for a model that has accumulators.
    - TensorFlow checkpoints (``tf.train.Checkpoint(model=...)``, tf_keras's TF-format
      ``save_weights``) reach it as a dependency ``enable`` adds.
    """

    def __init__(self):
        super().__init__(name=ATTRIBUTE)

    @classmethod
    def of(cls, model) -> "ModelAccumulators":
        state = model.__dict__.get(_SLOT)
        if state is None:
            state = cls()
            object.__setattr__(model, _SLOT, state)
        return state

    @property
    def name(self):  # no name: Keras then writes no group for a model without accumulators
        return None

    def _obj_type(self) -> str:
        return compat.SAVER_OBJ_TYPE

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


class _Attribute:
    """``keras.Model.svgd_accumulators``: ``ModelAccumulators.of(model)``."""

    def __get__(self, model, owner=None):
        return self if model is None else ModelAccumulators.of(model)


def install_hook() -> None:
    """Add ``svgd_accumulators`` to ``keras.Model`` (done on import; idempotent)."""
    if not isinstance(keras.Model.__dict__.get(ATTRIBUTE), _Attribute):
        setattr(keras.Model, ATTRIBUTE, _Attribute())


install_hook()


def _keras_variables(model) -> dict[int, tuple[str, Any]]:
    """id of each weight's backing ``tf.Variable`` (mirrored or not) -> (state key, weight)."""
    return {id(compat.backing_variable(w)): (f"weights.{i}.{compat.weight_name(model, w)}", w)
            for i, w in enumerate(model.weights)}


class _KerasFrontEnd:
    """The step Keras runs, traced by ``KerasSVGD``, in; an ``SVGDStep`` over the model's
    accumulators out."""

    def __init__(self, concrete_function, model):
        self.concrete_function, self.model = concrete_function, model

    def load(self):
        loaded = load_concrete_function(self.concrete_function)
        loaded.jit_compile = None  # Keras's own function carries jit_compile around the step
        loaded.xla = bool(self.model.jit_compile)
        weights = _keras_variables(self.model)
        trainable = {id(compat.backing_variable(w)) for w in self.model.trainable_weights}
        for p, v in loaded.call.variable_objects.items():
            mirrored = distributed_container(v.handle)
            owner = mirrored[0] if mirrored else v
            if id(owner) in weights:
                loaded.variable_keys[p] = weights[id(owner)][0]
                info = loaded.variables[p]
                if info.trainable and id(owner) not in trainable:  # a frozen layer's weight
                    loaded.variables[p] = replace(info, trainable=False)
        return loaded

    def finish(self, loaded, rewritten, report) -> SVGDStep:
        """Step k of a schedule of s or ρ is the optimizer's ``iterations``."""
        model = self.model
        return SVGDStep(loaded, rewritten, report, name="svgd_keras_step",
                        state=ModelAccumulators.of(model),
                        step_number=lambda: compat.backing_variable(model.optimizer.iterations))


class _Compiled:
    """What a rewritten step depends on besides the data: the objects ``compile()`` creates
    (optimizer, loss and metrics containers) and the trainable variables. Held by weak
    reference, so that a new object at a collected one's address never looks the same."""

    def __init__(self, model):
        self._refs = [None if o is None else weakref.ref(o) for o in self._objects(model)]

    @staticmethod
    def _objects(model) -> list:
        return list(compat.compiled_objects(model)) + [
            compat.backing_variable(w) for w in model.trainable_weights]

    def same(self, model) -> bool:
        objects = self._objects(model)
        return len(objects) == len(self._refs) and all(
            (r is None and o is None) or (r is not None and r() is o)
            for r, o in zip(self._refs, objects))


class _KerasOwnStep:
    """A trace with nothing to rewrite (no trainable kernel reaches the loss): Keras's own
    step runs, as without ``enable``."""

    def __init__(self, run: Callable, reason: str):
        self.run, self.reason = run, reason  # run(data): Keras's own step


class _Logging:
    """What ``Diagnostics`` adds to a traced train step: one summary of each transformed
    kernel's figures (r entering step k, with ``ratio`` also the norm ratio that step k
    computes from its own gradients and returns, with ``histograms`` r's histograms) and
    s(k), at k = the optimizer's ``iterations``. ``in_graph``: the trace decides per step,
    under ``tf.cond`` (a train function running several steps per call): the ratio on the
    steps k % ratio_every == 0, the histograms on k % histogram_every == 0, the rest on those
    and on k % every == 0. Otherwise it logs every step of its trace (``_EveryNth`` calls it
    only on the steps due). With the ratio the summary is built and written inside the step's
    function (``run_with_taps``' ``then``) once the ratio is computed, while the step's last
    updates run (not beside the forward pass, nor after the step: a summary built from the
    ratio the step returns would wait for its last update)."""

    def __init__(self, writer, every: int, ratio_every: int, histogram_every: int,
                 in_graph: bool, ratio: bool, histograms: bool):
        self.writer, self.every = writer, every
        self.ratio_every, self.histogram_every = ratio_every, histogram_every
        self.in_graph, self.ratio, self.histograms = in_graph, ratio, histograms

    def due(self, k: int) -> tuple[bool, bool] | None:
        """(ratio, histograms) of step ``k`` if it is logged, else None."""
        ratio, histograms = k % self.ratio_every == 0, k % self.histogram_every == 0
        return (ratio, histograms) if ratio or histograms or k % self.every == 0 else None

    def run(self, model, step: SVGDStep, tensors: list):
        """The step on ``tensors`` (its outputs), logged."""
        k = tf.cast(compat.backing_variable(model.optimizer.iterations).read_value(), tf.int64)

        def logged(ratio: bool, histograms: "bool | tf.Tensor"):
            sites = [(s.variable, step.accumulator_of(s)) for s in step.report.sites]
            entering = [(name, tf.convert_to_tensor(r)) for name, r in sites if r is not None]
            scale = (step.scale_at_step() if "scale" in step.state.hyperparameter_variables
                     else None)
            reads = [r for _, r in entering] + ([scale] if scale is not None else [])

            def write(tapped: list[tf.Tensor]) -> None:
                ratios = (step.ratio_names(), tapped[0]) if tapped else ([], None)
                with tf.control_dependencies(tapped):  # all of it at the step's end
                    write_summaries(self.writer, k,
                                    _summary(entering, ratios, scale, histograms))

            with tf.control_dependencies(reads):  # read before the step writes them
                if ratio:  # written inside the step, as soon as the ratio is computed
                    return step.run_with_taps(*tensors, then=write)[0]
                outputs = step.function(*tensors)
            write([])
            return outputs

        if not self.in_graph:
            return logged(self.ratio, self.histograms)
        histograms = tf.equal(k % self.histogram_every, 0)
        return tf.cond(tf.equal(k % self.ratio_every, 0), lambda: logged(True, histograms),
                       lambda: tf.cond(tf.logical_or(tf.equal(k % self.every, 0), histograms),
                                       lambda: logged(False, histograms),
                                       lambda: step.function(*tensors)))


class _EveryNth:
    """The model's ``train_function`` while a ``Diagnostics`` callback is attached: a call
    that starts on a step due runs the logged train function for what is due then (the
    ratio, the histograms: ``_Logging.due``), the others Keras's own, so that the steps not
    logged cost nothing more. With several steps per call, every call runs the one logged
    function (it decides per step, in the graph)."""

    def __init__(self, svgd: "KerasSVGD", plain: Callable,
                 logged: dict[tuple[bool, bool], tuple[Callable, _Logging]], k: int,
                 per_call: int):
        self.svgd, self.plain, self.logged = svgd, plain, logged  # logged[ratio, histograms]
        self.settings = next(iter(logged.values()))[1]
        self.k, self.per_call, self.active = k, per_call, True  # k: iterations before a call

    def __call__(self, iterator):
        due = None
        if self.active:
            due = (True, True) if self.settings.in_graph else self.settings.due(self.k)
        function, self.svgd.logging = self.plain, None
        if due is not None:
            function, self.svgd.logging = self.logged[due]  # read when the call traces
        try:
            return function(iterator)
        finally:
            self.svgd.logging = None
            self.k += self.per_call


def _summary(entering: list[tuple[str, tf.Tensor]],
             ratios: tuple[list[str], tf.Tensor | None], scale: tf.Tensor | None,
             histograms: "bool | tf.Tensor") -> tf.Tensor:
    """Serialized ``Summary`` protos (the scalar record alone, or a vector: the scalars, then,
    where ``histograms``, one histogram per kernel): per kernel ``<name>/r_mean``, ``r_min``, ``r_max``, ``ratio``
    (``ratios``: the names of the step's ratio vector, and the vector) and the histogram
    ``<name>/r``; ``svgd/scale``. ``histograms`` may be a boolean tensor (decided in the
    graph).

    Every figure is one entry of one vector (every r reduced in one concatenated vector by
    segment reductions), so that the op count does not grow with the figures; non-finite
    entries of r count as 0 in the histograms (TensorBoard's histogram op refuses them;
    r_min and r_max show them)."""
    names = [name for name, _ in entering]
    flat = [r if r.shape.rank == 1 else tf.reshape(r, [-1]) for _, r in entering] or [
        tf.zeros([0])]
    sizes = [int(f.shape[0]) for f in flat]
    every_r = tf.concat(flat, 0)
    segments = tf.constant(np.repeat(np.arange(len(flat)), sizes), tf.int32)
    tags = [f"{n}/{figure}" for figure in ("r_mean", "r_min", "r_max") for n in names]
    values = [tf.math.segment_mean(every_r, segments), tf.math.segment_min(every_r, segments),
              tf.math.segment_max(every_r, segments)]
    ratio_names, ratio = ratios
    if ratio_names:
        tags += [f"{n}/ratio" for n in ratio_names]
        values.append(ratio)
    if scale is not None:
        tags.append("svgd/scale")
        values.append(tf.reshape(tf.cast(scale, tf.float32), [1]))
    scalars = tf.raw_ops.ScalarSummary(tags=tf.constant(tags), values=tf.concat(values, 0))

    def with_histograms():
        finite = tf.where(tf.math.is_finite(every_r), every_r, 0.0)
        return tf.stack([scalars] + [tf.raw_ops.HistogramSummary(tag=f"{name}/r", values=r)
                                     for name, r in zip(names, tf.split(finite, sizes))])

    if isinstance(histograms, bool):
        return with_histograms() if histograms and names else scalars
    return tf.cond(histograms, with_histograms, lambda: tf.reshape(scalars, [1]))


class KerasSVGD:
    """What ``enable`` returns: the rewritten steps of one model.

    ``report`` is the report of the step traced last (``None`` until ``fit`` or
    ``train_on_batch`` has traced one); ``accumulators`` are the model's r variables (one per
    trained variable); ``state`` is the model's ``ModelAccumulators`` (its
    ``AccumulatorState``, as ``SVGDStep.state`` is a rewrite's) holding them by key; ``steps`` the rewritten steps by traced data structure (one cache, emptied
    when the model is compiled again or its trainable variables change); ``notes`` what
    restoring found.
    """

    def __init__(self, model, options: Options):
        self.model = model
        self.options = options
        self.replaced = ""  # set when enable replaced an earlier enable's options
        self.steps: dict[str, SVGDStep | _KerasOwnStep] = {}
        self.report: Report | None = None
        self.logging: _Logging | None = None  # set by Diagnostics while a logged step traces
        self._compiled = _Compiled(model)

    def __repr__(self) -> str:
        return (f"<svgd_rewrite.keras.KerasSVGD of {self.model.name!r}: "
                f"{len(self.steps)} traced step(s), {len(self.accumulators)} accumulator(s)>")

    def __str__(self) -> str:
        return str(self.report) if self.report is not None else (
            "svgd-rewrite: enabled; the step is rewritten when fit/train_on_batch first traces it")

    @property
    def state(self) -> ModelAccumulators:
        return ModelAccumulators.of(self.model)

    @property
    def accumulators(self) -> list:
        return list(self.state.accumulators.values())

    @property
    def notes(self) -> list[str]:
        """What restoring found, and whether this enable replaced earlier options."""
        return ([self.replaced] if self.replaced else []) + self.state.notes

    def _step(self, data, rewrite: Callable, plain: Callable):
        """The one step cache: the rewritten step for ``data``'s structure and types under the
        model's compiled state, rewritten on first use; where there is nothing to rewrite, a
        ``_KerasOwnStep`` of ``plain`` (Keras's own step, run on the data)."""
        if not self._compiled.same(self.model):  # compile() again, or (un)freezing
            self.steps.clear()
            self._compiled = _Compiled(self.model)
        key = repr(tf.nest.map_structure(_spec, data))
        step = self.steps.get(key)
        if step is None:
            try:
                step = rewrite()
            except _NOTHING_TO_REWRITE as e:
                step = _KerasOwnStep(plain, str(e))
                warnings.warn(f"svgd_rewrite: {self.model.name}: nothing to rewrite ({e}); "
                              "fit trains with Keras's own step", stacklevel=4)
            else:
                self.report = step.report
                if self.replaced and self.replaced not in self.report.warnings:
                    self.report.warnings.append(self.replaced)
            self.steps[key] = step
        return step

    # --- the train step Keras calls --------------------------------------------------------
    def train_step(self, data):
        if tf.executing_eagerly():
            raise SVGDRewriteError("the model runs eagerly (run_eagerly=True): there is no graph "
                                   "to rewrite; compile it with run_eagerly=False")
        tensors = [t for t in tf.nest.flatten(data) if t is not None]
        if not all(tf.is_tensor(t) and not isinstance(t, tf.SparseTensor) for t in tensors):
            raise SVGDRewriteError("fit's data holds non-dense tensors (sparse or ragged): "
                                   "feed dense tensors to train with virtual gradients")
        original = type(self.model).train_step  # the class's step: a user's override included
        step = self._step(data, lambda: self._rewrite(data),
                          lambda d: original(self.model, d))
        if isinstance(step, _KerasOwnStep):
            return step.run(data)
        if self.logging is not None:  # the step, and the summaries when due
            return self.logging.run(self.model, step, tensors)
        return step.function(*tensors)

    def _rewrite(self, data) -> SVGDStep:
        model = self.model
        original = type(model).train_step
        structure = tf.nest.map_structure(lambda t: None if t is None else "tensor", data)
        specs = tuple(tf.TensorSpec(t.shape, t.dtype, name=f"data_{k}")
                      for k, t in enumerate(t for t in tf.nest.flatten(data) if t is not None))

        def flat_step(*tensors):
            it = iter(tensors)
            data = tf.nest.map_structure(lambda t: None if t is None else next(it), structure)
            return original(model, data)

        # traced in its own graph (not under init_scope: it stops tapes)
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
            n = compat.steps_per_execution(model)
            if not isinstance(iterator, (tf.data.Iterator, tf.distribute.DistributedIterator)):
                for _, data in zip(range(n), iterator):  # a list
                    outputs = self._distributed_step(data)
                return outputs
            for _ in range(n):
                optional = iterator.get_next_as_optional()
                if not optional.has_value():
                    if outputs is None:
                        raise StopIteration
                    break
                outputs = self._distributed_step(optional.get_value())
            return outputs

        model.train_function = train_function
        return train_function

    def _replicated(self):
        model = self.model
        original = type(model).train_step

        def replicated(data):
            outputs = model.distribute_strategy.run(lambda d: original(model, d), args=(data,))
            compat.count_step(model)
            return compat.reduce_per_replica(model, outputs)

        return replicated

    def _distributed_step(self, data):
        replicated = self._replicated()
        step = self._step(data, lambda: rewrite_with(_KerasFrontEnd(
            tf.function(replicated, autograph=False).get_concrete_function(data), self.model),
            self.options), tf.function(replicated, autograph=False))
        return step.run(data) if isinstance(step, _KerasOwnStep) else step(data)


def _spec(value):
    """The cache key's part for one leaf of the data (``None`` for an absent one)."""
    if value is None:
        return None
    return getattr(value, "_type_spec", None) or tf.type_spec_from_value(value)


def _check_model(model) -> None:
    flavor = compat.flavor_of(model)
    if flavor is None:
        raise SVGDRewriteError(f"expected a Keras model (keras.Model, or tf_keras.Model), got "
                               f"{type(model).__name__}")
    if getattr(model, "optimizer", None) is None or not compat.is_compiled(model):
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

    ``model``: a compiled Keras 3 or tf_keras model (any optimizer, loss, metrics,
    ``loss_weights``, ``steps_per_execution``, ``jit_compile``, mixed precision;
    ``MirroredStrategy``), not run eagerly. The options are ``svgd_rewrite.rewrite``'s
    (``scale``: 0.01 for convolutional or sequence models, 0.001 for VGG-like nets;
    ``transform="identity"``: the same surgery with ĝ = g, so that ``fit`` trains exactly as
    without ``enable`` — a check).

    Returns a ``KerasSVGD``: ``report`` (filled when the step is first traced),
    ``accumulators``, ``state``, ``notes``. Enabling again replaces the options
    and keeps the accumulators. A traced step with nothing to rewrite (no trainable kernel
    reaches the loss) runs Keras's own step, with a warning. Raises ``SVGDRewriteError`` (not
    compiled, ``run_eagerly=True``, not a Keras model), ``NoSitesError`` (a built model
    without a trainable kernel), ``UnsupportedError`` (a strategy other than
    ``MirroredStrategy``) or ``InvalidOptionError``, each with one line.
{options}"""
    return _enable(model, options)


def _enable(model, options: Options) -> KerasSVGD:
    _check_model(model)
    previous = _ENABLED.get(model)
    if previous is not None:
        disable(model)
    svgd = KerasSVGD(model, options)
    if previous is not None and previous.options != options:
        changed = {k: (v, getattr(options, k)) for k, v in previous.options.to_dict().items()
                   if getattr(options, k) != previous.options.to_dict()[k]
                   and not (k == "ops" and list(options.ops) == v)}
        svgd.replaced = ("enable: the options were replaced ("
                         + ", ".join(f"{k} {a!r} → {b!r}" for k, (a, b) in changed.items())
                         + "); the accumulators are kept")
    _ENABLED[model] = svgd
    accumulators = ModelAccumulators.of(model)
    compat.track(model, ATTRIBUTE, accumulators)
    object.__setattr__(model, "train_step", svgd.train_step)
    if model.distribute_strategy.num_replicas_in_sync > 1:  # the whole replicated step
        object.__setattr__(model, "make_train_function", svgd.make_distributed_train_function)
    model.train_function = None  # rebuilt around the new step on the next fit
    iterations = getattr(model.optimizer, "iterations", None)
    restored = accumulators._plain.restored or checkpoint_restored(accumulators)
    if (not accumulators.accumulators and not restored
            and iterations is not None and int(iterations.numpy()) > 0):
        warnings.warn("svgd_rewrite: the optimizer has already taken steps but no SVGD "
                      "accumulators were restored: if this model was saved with SVGD enabled, "
                      "import svgd_rewrite.keras before keras.models.load_model", stacklevel=2)
    return svgd


def disable(model) -> None:
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


def enabled(model) -> KerasSVGD | None:
    """The ``KerasSVGD`` of an enabled model, else ``None``."""
    return _ENABLED.get(model)


class _Callback(keras.callbacks.Callback):
    """A Keras 3 callback that tf_keras's callback list also takes: it asks every callback
    which batch hooks it implements (Keras 3's base class has no such methods)."""

    train_batch_hooks = False

    def _implements_train_batch_hooks(self) -> bool:
        return self.train_batch_hooks

    def _implements_test_batch_hooks(self) -> bool:
        return False

    def _implements_predict_batch_hooks(self) -> bool:
        return False


class VirtualGradients(_Callback):
    """``model.fit(..., callbacks=[VirtualGradients(scale=0.01)])``: train this ``fit`` with
    virtual gradients (a Keras 3 or a tf_keras model).

    Takes ``enable``'s options — ``scale``, ``rho``, ``epsilon``, ``ops``, ``granularity``,
    ``transform``, ``pooling``, ``post_scale``, ``portable`` (see ``enable``) — checked when
    the callback is made. ``keep`` (default False): leave the model enabled after
    ``fit`` (a later ``fit`` then continues with SVGD); by default the model is back to its
    plain step when ``fit`` ends (the accumulators stay for the next enable). ``svgd`` is the
    ``KerasSVGD`` (its ``report`` once the step is traced). A model that is not compiled is
    refused with one line when ``fit`` starts.
    """

    @takes_options
    def __init__(self, *, keep: bool = False, options: Options):
        super().__init__()
        self.options = options  # validated now, not at the start of fit
        self.keep = keep
        self.svgd: KerasSVGD | None = None
        self._was_enabled = False

    def on_train_begin(self, logs=None):
        self._was_enabled = enabled(self.model) is not None
        self.svgd = enabled(self.model) or _enable(self.model, self.options)
        self.model.make_train_function(force=True)

    def on_train_end(self, logs=None):
        if not self.keep and not self._was_enabled:
            disable(self.model)


def _steps(name: str, value) -> int:
    """``value``, a positive number of steps (else a one-line error naming ``name``)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SVGDRewriteError(f"{name} must be a positive number of steps, got {value!r}")
    return value


class Diagnostics(_Callback):
    """``model.fit(..., callbacks=[Diagnostics("logs/svgd", every=10)])``: TensorBoard
    summaries of SVGD per transformed kernel, named by its variable (layer path).

    On every ``every``-th step k (the optimizer's ``iterations``, from 0): the scalars
    ``<kernel>/r_mean``, ``r_min``, ``r_max`` (r entering step k) and ``svgd/scale`` = s(k);
    on every ``ratio_every``-th step (by default every ``every``-th) also the scalar
    ``<kernel>/ratio`` = ‖virtual gradient of θ‖ / ‖plain gradient of θ‖ of step k (from
    the gradients the step computed; sites inside ``While`` loops have none), the one figure
    that costs graph work; on every ``histogram_every``-th step (by default every
    ``10 * every``-th: the histograms cost more than all the scalars, and TensorBoard shows
    at most 500 per kernel) also the histogram ``<kernel>/r``. The steps due run another
    trace of the train function that also writes the summaries (a scalar event, and one
    histogram event per kernel; the writer holds them until an epoch ends, or longer, see
    ``_writer``); the other steps run Keras's own, at no cost. With ``steps_per_execution``
    > 1 one trace decides per step, under a ``tf.cond``.
    The logged trace is not compiled with XLA (``jit_compile``: it has no summary ops). The
    model must be enabled (``enable``, or ``VirtualGradients`` before this callback in the
    list); not under ``MirroredStrategy`` (nothing is logged there).
    """

    train_batch_hooks = False
    QUEUE = 1000  # events the writer holds

    def __init__(self, log_dir: str, every: int = 10, ratio_every: int | None = None,
                 histogram_every: int | None = None):
        super().__init__()
        self.log_dir, self.every = log_dir, _steps("every", every)
        self.ratio_every = _steps("ratio_every", every if ratio_every is None else ratio_every)
        self.histogram_every = _steps(
            "histogram_every", 10 * every if histogram_every is None else histogram_every)
        self._file_writer = None

    def on_train_begin(self, logs=None):
        svgd = enabled(self.model)
        if svgd is None:
            return
        model = self.model
        current = model.train_function
        k = int(compat.backing_variable(model.optimizer.iterations).numpy())
        per_call = compat.steps_per_execution(model)
        if (isinstance(current, _EveryNth) and current.settings.writer is self._writer()
                and current.per_call == per_call):
            current.k, current.active = k, True
            return
        plain = current.plain if isinstance(current, _EveryNth) else current
        if plain is None:
            model.make_train_function(force=True)
            plain = model.train_function
        logged = {}
        for ratio, histograms in ([(True, True)] if per_call > 1 else
                                  itertools.product((True, False), repeat=2)):
            logging = _Logging(self._writer(), self.every, self.ratio_every,
                               self.histogram_every, in_graph=per_call > 1, ratio=ratio,
                               histograms=histograms)
            jit_compile = model.jit_compile  # XLA has no summary ops: logged traces run without
            model.jit_compile = False
            try:
                model.make_train_function(force=True)  # traced on its first call
            finally:
                model.jit_compile = jit_compile
            logged[ratio, histograms] = (model.train_function, logging)
        model.train_function = _EveryNth(svgd, plain, logged, k, per_call)

    def _writer(self):
        """The event file writer: it holds up to ``QUEUE`` events (a logged step writes one
        per histogram, and one more) and writes them every 2 minutes, when full, and at the
        end of each epoch and of ``fit``, so that a step does not wait for the file."""
        if self._file_writer is None:
            self._file_writer = tf.summary.create_file_writer(self.log_dir,
                                                              max_queue=self.QUEUE)
        return self._file_writer

    def on_epoch_end(self, epoch, logs=None):
        if self._file_writer is not None:
            self._file_writer.flush()

    def on_train_end(self, logs=None):
        current = getattr(self.model, "train_function", None)
        if isinstance(current, _EveryNth):
            current.active = False  # a later fit or train_on_batch logs nothing
        if self._file_writer is not None:
            self._file_writer.flush()
