"""Load stage: a ``tf.function`` / ``ConcreteFunction`` becomes a ``LoadedStep``.

A LoadedStep is a flat GraphDef (function calls inlined) plus what the emit stage needs to
call it again: the placeholders of the user inputs and of the captured tensors, the variables
behind the captured resource handles, and the output tensors with their structure.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import tensorflow as tf
from tensorflow.core.framework import graph_pb2

from .errors import LoadError, UnsupportedError, already_rewritten
from .inline import inline_calls
from .tf_compat import distributed_container, strategy_of, traced_concrete_functions

MARKER_NODE = "svgd_rewrite/marker"


@dataclass(frozen=True)
class VariableInfo:
    """A variable captured by the step, seen through its resource placeholder."""

    placeholder: str
    name: str
    shape: tuple[int | None, ...]
    dtype: tf.DType
    trainable: bool
    replica: int | None = None  # tf.distribute: the component's index among the replicas
    logical_name: str = ""  # tf.distribute: the mirrored variable's name (else ``name``)


@dataclass(frozen=True)
class Distribution:
    """A step traced under ``tf.distribute``: one copy of the step per local replica.

    ``devices``: the local replicas' devices, in component order; ``replicas``: the replicas
    in sync over every worker; ``multi_worker``: other workers hold the other replicas.
    """

    strategy: Any
    devices: tuple[str, ...]
    replicas: int
    multi_worker: bool


@dataclass
class CallingConvention:
    """How a traced step is called and what it returns: only the step object that imports the
    rewritten graph reads it (``step.SVGDStep``); a TF1 graph has none."""

    input_placeholders: list[str]
    input_signature: tuple[Any, ...]  # positional arguments, then keyword arguments by name
    n_positional: int
    keyword_names: list[str]
    structured_outputs: Any
    captures: list[tuple[str, Any]] = field(default_factory=list)
    # Values captured at call time (tf.distribute's collective instance keys): placeholder,
    # closure, spec.
    deferred_captures: list[tuple[str, Any, tf.TensorSpec]] = field(default_factory=list)
    variable_objects: dict[str, tf.Variable] = field(default_factory=dict)


@dataclass
class LoadedStep:
    """A traced training step as the pipeline reads it: a flat GraphDef, its variables, what
    it outputs; ``call`` carries the calling convention (None for a TF1 graph)."""

    graph_def: graph_pb2.GraphDef
    output_tensors: list[str]
    variables: dict[str, VariableInfo] = field(default_factory=dict)
    distribution: Distribution | None = None
    # The nodes whose variable writes are the step's updates (None: every write in the graph;
    # a TF1 front end gives its train op and the op's ancestors).
    update_scope: frozenset[str] | None = None
    jit_compile: bool | None = None  # the step was declared with jit_compile=True
    xla: bool = False  # the step runs under XLA (its own jit_compile, or Keras's)
    # θ's placeholder -> the name of its accumulator in the training state (default: the
    # variable's name; tf.distribute: the mirrored variable's)
    variable_keys: dict[str, str] = field(default_factory=dict)
    call: CallingConvention | None = None


def is_rewritten(graph_def: graph_pb2.GraphDef) -> bool:
    """True when ``graph_def`` (or a function in its library) holds svgd-rewrite's marker."""
    def marked(nodes) -> bool:
        return any(n.name == MARKER_NODE or n.name.endswith("/" + MARKER_NODE) for n in nodes)

    return marked(graph_def.node) or any(marked(f.node_def) for f in graph_def.library.function)


def concrete_function_of(fn) -> Any:
    """The ConcreteFunction to rewrite: ``fn`` itself, or the one trace of a ``tf.function``."""
    if isinstance(fn, tf.types.experimental.ConcreteFunction):
        return fn
    if isinstance(fn, tf.types.experimental.PolymorphicFunction) or hasattr(fn, "get_concrete_function"):
        if getattr(fn, "input_signature", None) is not None:
            return fn.get_concrete_function()
        traced = traced_concrete_functions(fn)
        if len(traced) == 1:
            return traced[0]
        if not traced:
            raise LoadError("the tf.function has no input_signature and was never traced: "
                            "call it once or pass fn.get_concrete_function(...)")
        raise LoadError(f"the tf.function was traced {len(traced)} times: pass the one to "
                        "rewrite as fn.get_concrete_function(...)")
    raise LoadError(f"expected a tf.function or ConcreteFunction, got {type(fn).__name__}: "
                    "wrap the training step in @tf.function")


def load_concrete_function(cf, variables: Sequence[tf.Variable] | None = None) -> LoadedStep:
    """Turn a ConcreteFunction into a LoadedStep.

    ``variables`` pairs captured handles with variables; by default the variables the
    function's graph recorded while tracing (a restored SavedModel passes its own).
    """
    graph = cf.graph
    graph_def = graph.as_graph_def()
    if is_rewritten(graph_def):
        raise already_rewritten()
    captures = list(graph.captures)
    deferred = [(t.op.name, closure, tf.TensorSpec(t.shape, t.dtype)) for t, closure in
                zip(graph.deferred_internal_captures, graph.deferred_external_captures)]
    n_user = len(cf.inputs) - len(captures) - len(deferred)
    input_placeholders = [t.op.name for t in cf.inputs[:n_user]]
    signature = cf.structured_input_signature
    args, kwargs = signature if signature is not None else ((), {})
    leaves = tf.nest.flatten((args, kwargs), expand_composites=True)
    if any(not isinstance(x, tf.TensorSpec) for x in leaves) or len(leaves) != n_user:
        raise LoadError("the step takes Python (non-tensor) arguments: trace it with tensor "
                        "arguments only (bake Python values into the function)")

    pool = list(variables) if variables is not None else list(graph.variables)
    by_handle = {}
    for v in pool:
        try:
            by_handle[id(v.handle)] = v
        except (AttributeError, ValueError):
            continue
    infos: dict[str, VariableInfo] = {}
    objects: dict[str, tf.Variable] = {}
    capture_pairs = []
    strategies = []
    for external, internal in captures:
        name = internal.op.name
        capture_pairs.append((name, external))
        v = by_handle.get(id(external))
        if v is not None:
            mirrored = distributed_container(external)
            if mirrored is not None:
                strategies.append(strategy_of(mirrored[0]))
            vname = v.name.split(":")[0]
            infos[name] = VariableInfo(
                placeholder=name, name=vname, shape=tuple(v.shape.as_list()),
                dtype=v.dtype, trainable=bool(v.trainable),
                replica=mirrored[1] if mirrored else None,
                logical_name=mirrored[0].name.split(":")[0] if mirrored else vname)
            objects[name] = v
    on_ps = [n for n, e in capture_pairs if "/job:ps" in str(getattr(e, "device", "") or "")]
    distribution = _distribution(strategies, graph_def, on_ps)

    out_tensors = [t.name for t in cf.outputs]
    xla = cf.function_def.attr.get("_XlaMustCompile")
    jit_compile = True if xla is not None and xla.b else None
    flat_graph = inline_calls(graph_def)
    call = CallingConvention(
        input_placeholders=input_placeholders,
        input_signature=tuple(args) + tuple(kwargs[k] for k in sorted(kwargs)),
        n_positional=len(args), keyword_names=sorted(kwargs),
        structured_outputs=cf.structured_outputs, captures=capture_pairs,
        deferred_captures=deferred, variable_objects=objects)
    return LoadedStep(
        graph_def=flat_graph, output_tensors=out_tensors, variables=infos,
        distribution=distribution, jit_compile=jit_compile, xla=bool(jit_compile),
        variable_keys={p: info.logical_name for p, info in infos.items()}, call=call)


_SUPPORTED_MESSAGE = ("supported: a tf.function that calls strategy.run under MirroredStrategy "
                      "or MultiWorkerMirroredStrategy")


def _distribution(strategies: list, graph_def: graph_pb2.GraphDef,
                  on_ps: list[str]) -> Distribution | None:
    """The step's tf.distribute setting, or ``UnsupportedError`` for a strategy (or a layout)
    the rewrite cannot follow. ``on_ps``: captured tensors placed on a parameter server."""
    if on_ps or any("/job:ps" in n.device for n in graph_def.node):
        raise UnsupportedError("the step places variables on parameter servers "
                               "(ParameterServerStrategy), which is not supported; "
                               f"{_SUPPORTED_MESSAGE}")
    strategies = [s for s in strategies if s is not None]
    kinds = {type(s).__name__ for s in strategies}
    if not kinds:
        return None
    unsupported = sorted(k for k in kinds if k not in _STRATEGY_KINDS)
    if unsupported or len({id(s) for s in strategies}) > 1:
        what = ", ".join(unsupported) if unsupported else "several strategies at once"
        raise UnsupportedError(f"the step's variables belong to {what}, which is not "
                               f"supported; {_SUPPORTED_MESSAGE}")
    strategy = strategies[0]
    devices = tuple(strategy.extended.worker_devices)
    replicas = int(strategy.num_replicas_in_sync)
    if replicas == 1 and len(devices) == 1:
        return None
    return Distribution(strategy=strategy, devices=devices, replicas=replicas,
                        multi_worker=replicas > len(devices))


# Class names behind the supported strategies (MultiWorkerMirroredStrategy is a
# CollectiveAllReduceStrategy).
_STRATEGY_KINDS = ("MirroredStrategy", "CollectiveAllReduceStrategy",
                   "_CollectiveAllReduceStrategyExperimental", "MultiWorkerMirroredStrategy")


def load_step(fn, variables: Sequence[tf.Variable] | None = None) -> LoadedStep:
    """Load a ``tf.function`` or ``ConcreteFunction`` (see ``load_concrete_function``)."""
    return load_concrete_function(concrete_function_of(fn), variables)
