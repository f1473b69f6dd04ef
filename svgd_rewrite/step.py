"""Emit stage: the rewritten GraphDef as a callable ``tf.Module`` (the ``SVGDStep``).

The GraphDef is imported inside a new ``tf.function`` with ``tf.graph_util.import_graph_def``;
inputs, captured tensors and accumulator handles are fed through ``input_map`` (their
placeholders are dropped first). Automatic control dependencies make every imported stateful
op (variable updates, accumulator assigns) run, in the original order.
"""
from __future__ import annotations

import inspect
from types import SimpleNamespace
from typing import Any, Callable

import tensorflow as tf
from tensorflow.core.framework import graph_pb2

from .errors import StepCallError, UnsupportedError, first_line, one_line
from .frontend import accumulator_variables
from .ir import map_colocation
from .load import LoadedStep
from .names import HYPERPARAMETERS
from .probe import RATIO, build_probe, taps_of
from .options import is_schedule, value_at
from .report import Report
from .shapes import infer_shapes
from .state import AccumulatorState
from .surgery import Rewritten
from .tf_compat import (capture, capture_call_time_value, distributed_container,
                        register_functions)

IMPORT_SCOPE = "svgd"


class _Wiring:
    """Plain (untracked) state of an SVGDStep: what to feed where on import."""

    def __init__(self, loaded: LoadedStep, rewritten: Rewritten):
        self.input_placeholders = list(loaded.call.input_placeholders)
        self.captures = list(loaded.call.captures)
        self.accumulator_placeholders = [a.placeholder for a in rewritten.accumulators]
        self.deferred_captures = list(loaded.call.deferred_captures)
        self.distributed = loaded.distribution is not None
        self.output_tensors = list(loaded.output_tensors)
        self.structured_outputs = loaded.call.structured_outputs
        self.n_positional = loaded.call.n_positional
        self.keyword_names = list(loaded.call.keyword_names)
        self.hyperparameters = dict(rewritten.hyperparameters)  # name -> graph input
        fed = set(self.input_placeholders) | {n for n, _ in self.captures} | set(
            self.accumulator_placeholders) | {n for n, _, _ in self.deferred_captures} | set(
            self.hyperparameters.values())
        self.import_graph_def = graph_pb2.GraphDef()
        self.import_graph_def.CopyFrom(rewritten.graph_def)
        del self.import_graph_def.node[:]
        self.import_graph_def.node.extend(n for n in rewritten.graph_def.node if n.name not in fed)
        _drop_colocation_with(self.import_graph_def, fed)
        # a fed name no node reads (an input the step ignores) cannot be mapped on import
        self.read = {i.lstrip("^").split(":")[0] for n in self.import_graph_def.node
                     for i in n.input}


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
    for k, spec in enumerate(loaded.call.input_signature[:loaded.call.n_positional]):
        name = getattr(spec, "name", None)
        names.append(name if name and name.isidentifier() and name not in names else f"arg_{k}")
    names += list(loaded.call.keyword_names)
    if len(set(names)) != len(names):
        names = [f"arg_{k}" for k in range(loaded.call.n_positional)] + list(loaded.call.keyword_names)

    def step(*values):
        return run(*values)

    step.__signature__ = inspect.Signature(
        [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in names])
    return step


def _handle(variable) -> tf.Tensor:
    """The resource handle of a ``tf.Variable`` or of a Keras variable."""
    return variable.handle if isinstance(variable, tf.Variable) else variable.value.handle


def _refuse_replicas() -> None:
    """A step traced on one device, called under ``strategy.run`` on several replicas, would
    update one accumulator from every replica: refuse rather than train wrong."""
    context = tf.distribute.get_replica_context()
    strategy = tf.distribute.get_strategy()
    if context is not None and tf.distribute.has_strategy() and strategy.num_replicas_in_sync > 1:
        raise UnsupportedError(
            f"a step traced on one device called under {type(strategy).__name__}.run on "
            f"{strategy.num_replicas_in_sync} replicas is not supported: rewrite the "
            "tf.function that calls strategy.run instead (it holds every replica)")


def _component(variable, replica: int):
    """Replica ``replica``'s component of a mirrored tf.Variable or Keras variable."""
    mirrored = variable if isinstance(variable, tf.Variable) else variable.value
    return mirrored.values[replica]


def _step_variables(loaded: LoadedStep) -> list:
    """The step's variables; under tf.distribute each mirrored variable once (not its
    per-replica components), so that a checkpoint saves it once."""
    out, seen = [], set()
    for p in sorted(loaded.call.variable_objects):
        v = loaded.call.variable_objects[p]
        mirrored = distributed_container(v.handle) if loaded.distribution else None
        v = mirrored[0] if mirrored else v
        if id(v) not in seen:
            seen.add(id(v))
            out.append(v)
    return out


class SVGDStep(tf.Module):
    """A training step rewritten to train with virtual gradients.

    Call it like the original step. ``state`` holds the accumulators r (one float32 variable
    per trained variable θ, by name; ``accumulators`` lists them in site order), ``report``
    says what was transformed, ``graph_def`` is the rewritten GraphDef. The original step's
    variables are shared, not copied (``step_variables``).
    """

    def __init__(self, loaded: LoadedStep, rewritten: Rewritten, report: Report,
                 name: str = "svgd_step", state: AccumulatorState | None = None,
                 step_number: Callable[[], Any] | None = None):
        """``state``: the ``AccumulatorState`` to read and update (shared with other steps
        over the same variables); a new one by default. ``step_number``: the 0-based step k
        that schedules of s and ρ read (a Keras optimizer's ``iterations``); by default the
        state's ``steps``, which each call counts."""
        super().__init__(name=name)
        distribution = loaded.distribution
        strategy = distribution.strategy if distribution is not None else None
        self.state = state if state is not None else AccumulatorState()
        by_group = {}
        for a in rewritten.accumulators:
            if a.group not in by_group:
                by_group[a.group] = self.state.variable(a.key, a.shape, strategy)
        self._wiring = _Wiring(loaded, rewritten)
        self._options, self._step_number = rewritten.options, step_number
        self._wiring.probe = None  # built on the first diagnostics() with a batch
        self._wiring.tapped = None  # built on the first run_with_taps
        self._wiring.ratio_graph_def = None  # the step that also computes the ratio
        self._wiring.shapes = None  # static shapes, for the ratio's Gram form
        portable = rewritten.options.portable
        self._wiring.one_pass = not (loaded.xla if portable is None else portable)
        self._wiring.taps = taps_of(rewritten.graph_def, rewritten.edits)
        self._wiring.jit_compile = loaded.jit_compile
        self._wiring.signature = SimpleNamespace(call=loaded.call)
        if rewritten.hyperparameters:
            self.state.hyperparameters(
                {h: value_at(getattr(rewritten.options, h)) for h in HYPERPARAMETERS}, strategy)
        with tf.init_scope():
            register_functions(rewritten.graph_def.library)
        self._wiring.order = sorted(by_group)
        self._wiring.by_group = by_group
        self.step_variables = _step_variables(loaded)
        self.report = report
        self.graph_def = rewritten.graph_def
        self.original_graph_def = loaded.graph_def
        self.edits = rewritten.edits
        self._wiring.graph_variables = accumulator_variables(loaded, rewritten)
        # The variable (or mirrored component) each accumulator placeholder is fed.
        self._wiring.feeds = [by_group[a.group] if a.replica is None else
                              _component(by_group[a.group], a.replica)
                              for a in rewritten.accumulators]
        self.function = tf.function(_with_parameters(self._run, loaded),
                                    input_signature=loaded.call.input_signature, autograph=False,
                                    jit_compile=loaded.jit_compile)

    @property
    def accumulators(self) -> list:
        """The accumulators this step updates, in site order."""
        return [self._wiring.by_group[g] for g in self._wiring.order]

    @property
    def graph_variables(self) -> dict:
        """The rewritten graph's variable placeholders, accumulators included
        (``RewriteResult``)."""
        return dict(self._wiring.graph_variables)

    def __call__(self, *args, **kwargs) -> Any:
        try:
            return self.function(*args, **kwargs)
        except TypeError as e:  # arguments that do not fit the step's input signature
            text = str(e)
            if not text.startswith("Binding inputs"):
                raise
            reason = text.split("`")[1] if text.count("`") >= 2 else first_line(e, 200)
            wanted = ", ".join(f"{getattr(s, 'name', None) or 'arg'}: {s.dtype.name}"
                               f"{s.shape}" for s in self.function.input_signature)
            raise StepCallError(f"the rewritten step takes ({wanted}); this call does not fit "
                                f"({one_line(reason)[:200]}): call it with tensors of those "
                                "shapes and dtypes, or rewrite a step traced for them") from None

    def _input_map(self, values, read: set[str], train: bool = True) -> dict:
        """What each graph input is fed on import: the call's values, the captures, the
        accumulators' handles, the call-time values, s, ρ, ε (only inputs ``read``)."""
        w = self._wiring
        args = values[:w.n_positional]
        kwargs = dict(zip(w.keyword_names, values[w.n_positional:]))
        flat = tf.nest.flatten((args, kwargs), expand_composites=True)
        input_map = {f"{name}:0": t for name, t in zip(w.input_placeholders, flat)}
        for name, external in w.captures:
            input_map[f"{name}:0"] = capture(external)
        for name, acc in zip(w.accumulator_placeholders, w.feeds):
            input_map[f"{name}:0"] = capture(_handle(acc))
        for name, closure, spec in w.deferred_captures:  # e.g. collective instance keys
            input_map[f"{name}:0"] = capture_call_time_value(closure, spec)
        for h, value in self._hyperparameter_values(store=train).items():
            input_map[f"{w.hyperparameters[h]}:0"] = value
        return {k: v for k, v in input_map.items() if k[:-2] in read}

    def _run(self, *values, taps: bool = False) -> Any:
        w = self._wiring
        if not w.distributed:
            _refuse_replicas()
        graph, tapped = w.import_graph_def, []
        if taps and w.taps is not None:
            if w.ratio_graph_def is None:
                w.ratio_graph_def = self._with_ratio(w.import_graph_def)
            graph, tapped = w.ratio_graph_def, [RATIO]
        outs = tf.graph_util.import_graph_def(
            graph, input_map=self._input_map(values, w.read),
            return_elements=w.output_tensors + tapped, name=IMPORT_SCOPE)
        outs, tapped = outs[:len(w.output_tensors)], outs[len(w.output_tensors):]
        if self.state.steps is not None and self._step_number is None:
            with tf.control_dependencies([o.op if hasattr(o, "op") else o for o in outs]):
                self.state.steps.assign_add(1)
        # Tensor leaves of the structure (TensorSpecs in a restored function) are the flat
        # outputs, in order.
        results = iter(outs)
        leaves = [next(results) if isinstance(t, (tf.Tensor, tf.TensorSpec)) else t
                  for t in tf.nest.flatten(w.structured_outputs, expand_composites=True)]
        structured = tf.nest.pack_sequence_as(w.structured_outputs, leaves,
                                              expand_composites=True)
        return (structured, tapped) if taps else structured

    def run_with_taps(self, *values, then: Callable[[list[tf.Tensor]], Any] | None = None
                      ) -> tuple[Any, list[tf.Tensor]]:
        """One training step, as a call of the step, that also returns what ``ratios`` reads:
        the norm ratio per site, from θ's gradients as the step computes them (a few
        reductions more; a pre-scaled site's P runs once more, on g). Call it inside a
        ``tf.function``.

        ``then(tapped)`` builds what uses the ratio (a summary write, say) inside the step's
        own function, so that it runs as soon as the ratio is computed: a ``tf.function``'s
        outputs wait for all its stateful ops, so the ratio returned waits for the step's
        last variable write. A step compiled with XLA calls it after the step instead. With
        ``then`` each call traces a function of its own (call it while tracing yours)."""
        w = self._wiring
        if then is not None and not w.jit_compile:
            return self._tapped_function(then)(*values)
        if w.tapped is None:
            w.tapped = self._tapped_function()
        outputs, tapped = w.tapped(*values)
        if then is not None:
            then(tapped)
        return outputs, tapped

    def _tapped_function(self, then: Callable[[list[tf.Tensor]], Any] | None = None):
        """The step with the ratio as a ``tf.function`` (``then`` called inside it)."""
        w = self._wiring

        def run(*values):
            outputs, tapped = self._run(*values, taps=True)
            if then is not None:
                then(tapped)
            return outputs, tapped

        return tf.function(_with_parameters(run, w.signature),
                           input_signature=self.function.input_signature, autograph=False,
                           jit_compile=w.jit_compile)

    def ratios(self, tapped: list[tf.Tensor]) -> dict[str, tf.Tensor]:
        """Per transformed variable (by name), ‖virtual gradient of θ‖ / ‖plain gradient of
        θ‖, from ``run_with_taps``' tensors."""
        names = self.ratio_names()
        return dict(zip(names, tf.unstack(tapped[0]))) if names else {}

    def ratio_names(self) -> list[str]:
        """The variable names of ``run_with_taps``' ratio vector's entries, in order."""
        taps = self._wiring.taps
        names_of = {site.index: site.variable for site in self.report.sites}
        return [] if taps is None else [names_of[site] for site in taps.sites]

    def diagnostics(self, *args, **kwargs) -> dict[str, dict[str, Any]]:
        """Per transformed variable (by its name in the report): r (``r``, its values) and
        its mean, min and max, and the current s (``scale``) — reading the state, at no cost.
        Given a batch (the step's arguments), also ‖virtual gradient of θ‖ / ‖plain gradient
        of θ‖ on it (``ratio``), from a read-only probe of the step (nothing trains; sites
        inside ``While`` loops have none)."""
        scale = self.state.hyperparameter_variables.get("scale")
        scale = float(scale.numpy()) if scale is not None else None  # the last step's s
        ratios = {}
        if args or kwargs:
            probe = self.probe_function()
            if probe is not None:
                ratios = {k: float(v) for k, v in probe(*args, **kwargs).items()}
        out = {}
        for site in self.report.sites:
            variable = self._wiring.by_group.get(site.index)
            if variable is None:  # a replica's copy: reported with its group
                continue
            r = variable.numpy()
            figures: dict[str, Any] = {"r": r, "r_mean": float(r.mean()),
                                       "r_min": float(r.min()), "r_max": float(r.max())}
            if site.variable in ratios:
                figures["ratio"] = ratios[site.variable]
            if scale is not None:
                figures["scale"] = scale
            out[site.variable] = figures
        return out

    def accumulator_of(self, site) -> tf.Variable | None:
        """The accumulator of a report's site (None for a replica's copy of a site)."""
        return self._wiring.by_group.get(site.index)

    def scale_at_step(self) -> tf.Tensor:
        """The s this step's next call uses (a schedule's value at step k), not stored."""
        return self._hyperparameter_values(store=False, names=("scale",))["scale"]

    def probe_function(self):
        """The ``tf.function`` behind ``diagnostics``' ratio (the step's arguments in, the
        norm ratio per variable name out), or None where no site can be probed; saved with a
        rewritten SavedModel as ``svgd_diagnostics``."""
        if self._wiring.probe is None:
            self._wiring.probe = self._make_probe()
        return self._wiring.probe or None

    def _with_ratio(self, graph_def: graph_pb2.GraphDef) -> graph_pb2.GraphDef:
        """``graph_def`` (the step's, or its import form) that also computes ``RATIO``."""
        w = self._wiring
        if w.shapes is None:
            w.shapes = infer_shapes(self.graph_def, w.graph_variables)
        return w.taps.with_ratio(graph_def, w.shapes, one_pass=w.one_pass)

    def _make_probe(self):
        """A ``tf.function`` of the step's arguments: per site, the norm ratio (``probe``)."""
        w = self._wiring
        cut = build_probe(self._with_ratio(self.graph_def)) if w.taps is not None else None
        if cut is None:
            return False
        probe_gd = graph_pb2.GraphDef()
        probe_gd.CopyFrom(cut)
        fed = {n.name for n in self.graph_def.node} - {n.name for n in w.import_graph_def.node}
        del probe_gd.node[:]
        probe_gd.node.extend(n for n in cut.node if n.name not in fed)
        _drop_colocation_with(probe_gd, fed)
        read = {i.lstrip("^").split(":")[0] for n in probe_gd.node for i in n.input}

        def probe(*values):
            return self.ratios(tf.graph_util.import_graph_def(
                probe_gd, input_map=self._input_map(values, read, train=False),
                return_elements=[RATIO], name="svgd_probe"))

        return tf.function(_with_parameters(probe, w.signature),
                           input_signature=self.function.input_signature, autograph=False)

    def _hyperparameter_values(self, store: bool = True,
                               names: tuple[str, ...] = HYPERPARAMETERS) -> dict[str, tf.Tensor]:
        """This call's s, ρ, ε (those ``names``): a schedule's value at step k (also stored
        in the state with ``store``, so that it can be read back), else the state's variable
        (assign it to change it)."""
        variables = self.state.hyperparameter_variables
        if not self._wiring.hyperparameters:
            return {}
        out = {}
        k = None
        for h in names:
            option = getattr(self._options, h)
            if is_schedule(option):
                if k is None:
                    k = tf.cast(self._step_number() if self._step_number is not None
                                else self.state.steps, tf.float32)
                value = tf.cast(option(k), tf.float32)
                if store:
                    variables[h].assign(value)
                out[h] = value
            else:
                out[h] = variables[h].read_value()
        return out
