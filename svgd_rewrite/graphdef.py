"""GraphDef and TF1 training graphs: the same pipeline, with a loader for graphs whose
variables are nodes (``VariableV2`` ref or ``VarHandleOp`` resource variables) and whose step
is a train op run in a ``Session``.

The accumulators are variables of the same kind as the graph's; the train op gains a control
dependency on every accumulator update; their initializers join the graph's init op (found
structurally) and a ``svgd_rewrite/init`` op.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Iterable

import networkx as nx
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import graph_pb2, node_def_pb2

from .variables import handle_consumers, variable_uses
from .edits import EditLog
from .errors import (InvalidOptionError, LoadError, NoGradientsError, OutputError,
                     already_rewritten, first_line, one_line)
from .frontend import rewrite_with
from .graph_edit import GraphEditor
from .inline import inline_calls
from .ir import GraphIR, map_colocation
from .load import LoadedStep, VariableInfo, is_rewritten
from .options import Options, is_schedule, takes_options
from .registry import (CONTROL_GROUP_OPS, DATA_SOURCE_OPS, FUSED_APPLY_PREFIXES,
                       RESTORE_OP_PREFIXES, VARIABLE_OPS)
from .progress import stage
from .report import Report
from .names import SCOPE, inserted_name
from .validate import IMPORT_ERRORS, check_input_graph

INIT_OP = f"{SCOPE}/init"


@dataclass
class GraphDefResult:
    """A rewritten TF1 graph: run ``init_op`` (or the graph's own init op, which now includes
    it) once, then the train op as before."""

    graph_def: graph_pb2.GraphDef
    original_graph_def: graph_pb2.GraphDef
    train_op: str
    init_op: str
    graph_init_ops: list[str]
    accumulators: list[tuple[str, tuple[int, ...]]]
    accumulator_reads: list[str]  # tensors that read each accumulator's current value
    accumulator_init_values: list[str]  # the zeros each accumulator starts from
    variable_kind: str
    report: Report
    # RewriteResult: the graph's variable nodes (the accumulators carry their own shapes)
    graph_variables: dict
    edits: EditLog  # what the rewrite changed (the train op's and init ops' inputs too)
    out_dir: str | None = None
    exported: Any = None

    def to_dict(self) -> dict:
        d = self.report.to_dict()
        d.update(train_op=self.train_op, init_op=self.init_op,
                 graph_init_ops=self.graph_init_ops, variable_kind=self.variable_kind)
        return d


def _variables(gd: graph_pb2.GraphDef, trainable: Iterable[str] | None) -> dict[str, VariableInfo]:
    names = None if trainable is None else {t.split(":")[0] for t in trainable}
    out = {}
    for n in gd.node:
        if n.op not in VARIABLE_OPS:
            continue
        dtype = tf.as_dtype(n.attr["dtype"].type)
        shape = tuple(d.size for d in n.attr["shape"].shape.dim)
        is_trainable = (n.name in names) if names is not None else dtype.is_floating
        out[n.name] = VariableInfo(placeholder=n.name, name=n.name, shape=shape, dtype=dtype,
                                   trainable=is_trainable)
    return out


@dataclass
class _Writes:
    """The writes of a TF1 graph's variables, told apart in one pass over the graph."""

    updates: dict[str, list[str]]  # variable -> writes whose value depends on a variable
    initializers: set[str]  # writes from constants (not from a Saver's restore op)
    trained: dict[str, list[str]]  # variable -> updates that apply a gradient to it


def _handle_slots(ir: GraphIR, placeholder: str) -> dict[str, set[int]]:
    """For each op reading the variable's handle (through ``Identity``), the input slots."""
    out: dict[str, set[int]] = {}
    for node, slot in handle_consumers(ir, placeholder):
        out.setdefault(node, set()).add(slot)
    return out


def _classify_writes(ir: GraphIR, variables: dict[str, VariableInfo]) -> _Writes:
    """Updates vs initializers, and which updates train their variable: a fused optimizer op
    (``ApplyMomentum``, ``ResourceApplyAdam``, ...) trains the variable of its first input (the
    others are its slots); any other write trains its variable when its value depends on the
    data (a gradient does; Adam's β-power updates, say, do not)."""
    sources = {p: 0 for p in variables}  # bit 0: depends on a variable
    sources.update({n: 1 for n in ir.order if ir.op(n).startswith(RESTORE_OP_PREFIXES)})  # bit 1
    sources.update({n: 2 for n in ir.order if ir.op(n) in DATA_SOURCE_OPS  # bit 2: on data
                    and ir.node(n).attr["dtype"].type != tf.resource.as_datatype_enum})
    reach = ir.reach_bits(sources)
    updates: dict[str, list[str]] = {}
    trained: dict[str, list[str]] = {}
    initializers: set[str] = set()
    for p in variables:
        slots = _handle_slots(ir, p)
        for w in variable_uses(ir, p)[0]:
            bits = 0
            for t in ir.data_inputs(w)[1:]:
                bits |= ir.bits_of(reach, t)
            if bits & 1:
                updates.setdefault(p, []).append(w)
                fused = ir.op(w).startswith(FUSED_APPLY_PREFIXES)
                if (0 in slots.get(w, ())) if fused else bool(bits & 4):
                    trained.setdefault(p, []).append(w)
            elif not bits & 2:
                initializers.add(w)
    return _Writes(updates, initializers, trained)



def find_train_op(ir: GraphIR, updates: dict[str, list[str]], train_op: str | None) -> str:
    """``train_op`` checked, or the one sink that runs updates of the most variables; a
    one-line error lists the candidates otherwise."""
    if train_op is not None:
        name = train_op.split(":")[0].lstrip("^")
        if name not in ir.order:
            raise LoadError(f"the graph has no op named {train_op!r}: check --train-op")
        return name
    if not updates:
        raise NoGradientsError("the graph updates no variable from gradients: a training "
                               "graph is needed (not a frozen or inference graph)")
    bit = {w: k for k, ws in enumerate(updates.values()) for w in ws}  # one bit per variable
    reach = ir.reach_bits(bit, control=True)
    scores = {sink: bin(reach.get(sink, 0)).count("1")
              for sink in ir.order if ir.g.out_degree(sink) == 0}
    best = max(scores.values())
    candidates = [n for n, score in scores.items() if score == best]
    if len(candidates) > 1:
        raise LoadError(f"several ops could be the train op ({', '.join(candidates[:6])}): "
                        "choose one with --train-op (train_op=...)")
    return candidates[0]


@dataclass
class TF1Step:
    """A TF1 training graph, loaded: the pipeline's LoadedStep plus what the graph adds."""

    loaded: LoadedStep
    train_op: str
    variable_kind: str  # "ref" or "resource"
    init_ops: list[str]  # the graph's own init ops (NoOps running variable initializers)


def load_graph_def(graph_def: graph_pb2.GraphDef, train_op: str | None = None,
                   trainable: Iterable[str] | None = None,
                   what: str = "the GraphDef") -> TF1Step:
    """A TF1 training graph as a LoadedStep, with its train op, variable kind and init ops.

    The graph is validated first (``what`` names it in the error)."""
    if is_rewritten(graph_def):
        raise already_rewritten("graph")
    check_input_graph(graph_def, what)
    gd = inline_calls(graph_def)
    if trainable is not None:
        names = {n.name for n in gd.node if n.op in VARIABLE_OPS}
        unknown = sorted({t.split(":")[0] for t in trainable} - names)
        if unknown:
            raise LoadError(f"{one_line(what)}: the trainable_variables collection names "
                            f"variables the graph does not have ({one_line(', '.join(unknown[:4]))}"
                            "): export the MetaGraph again")
    variables = _variables(gd, trainable)
    if not variables:
        raise NoGradientsError("the graph has no variables (a frozen inference graph?): a "
                               "training graph with its variables is needed")
    ir = GraphIR(gd)
    writes = _classify_writes(ir, variables)
    updates = writes.updates
    train = find_train_op(ir, updates, train_op)
    scope = frozenset(nx.ancestors(ir.g, train) | {train})
    if trainable is None:  # the floating-point variables the train op applies gradients to
        variables = {p: VariableInfo(v.placeholder, v.name, v.shape, v.dtype,
                                     v.trainable and any(w in scope
                                                         for w in writes.trained.get(p, ())))
                     for p, v in variables.items()}
    kinds = sorted({VARIABLE_OPS[ir.op(p)] for p in variables})
    kind = "resource" if "resource" in kinds else "ref"
    # The graph's results (the loss, typically) are its sinks: the V_θ→σ nodes to report are
    # their ancestors (an L1 penalty's Abs, say).
    sinks = [f"{n}:0" for n in ir.order if ir.g.out_degree(n) == 0 and ir.op(n) not in CONTROL_GROUP_OPS]
    loaded = LoadedStep(graph_def=gd, output_tensors=sinks, variables=variables,
                        update_scope=scope)
    return TF1Step(loaded, train, kind, _init_ops(ir, writes.initializers))


def _init_ops(ir: GraphIR, initializers: set[str]) -> list[str]:
    """The graph's init ops: NoOps whose control inputs are variable initializers."""
    out = []
    for name in (n for op in sorted(CONTROL_GROUP_OPS) for n in ir.nodes_of_op(op)):
        deps = {i[1:] for i in ir.node(name).input if i.startswith("^")}
        groups = {n for n in deps if ir.op(n) in CONTROL_GROUP_OPS}
        if deps and deps <= initializers | groups and deps & initializers:
            out.append(name)
    return out


@takes_options
def rewrite_graph_def(graph_def: graph_pb2.GraphDef, *, train_op: str | None = None,
                      trainable: Iterable[str] | None = None, what: str = "the GraphDef",
                      options: Options) -> GraphDefResult:
    """Rewrite a TF1 training GraphDef so that its train op trains with virtual gradients.

    ``train_op`` names the train op (default: found from the graph); ``trainable`` names the
    trainable variables (a MetaGraph's collection); by default every floating-point
    variable. ``what`` names the input in messages. The options are
    ``svgd_rewrite.rewrite``'s.
{options}"""
    return rewrite_with(GraphDefFrontEnd(graph_def, train_op, trainable, what), options)


def _variable_template(kind: str, shape: tuple[int, ...], key: str) -> dict:
    """An accumulator as a TF1 variable of ``kind`` (``resource``: ``VarHandleOp`` with
    ``shared_name`` ``svgd/<key>``; ``ref``: ``VariableV2``), its zeros and initializer, and —
    for ``ref`` — its read (``Identity``) and update (``Assign``), traced in a scratch graph."""
    f32, raw = tf.float32, tf.raw_ops
    graph = tf.Graph()
    with graph.as_default():
        if kind == "resource":
            acc = raw.VarHandleOp(dtype=f32, shape=shape, shared_name=f"svgd/{key}",
                                  name="accumulator")
        else:
            acc = raw.VariableV2(shape=shape, dtype=f32, name="accumulator")
        zeros = tf.constant(np.zeros(shape, np.float32), name="zeros")
        if kind == "resource":
            raw.AssignVariableOp(resource=acc, value=zeros, name="initializer")
        else:
            raw.Assign(ref=acc, value=zeros, validate_shape=True, use_locking=True,
                       name="initializer")
            raw.Identity(input=acc, name="r")
            value = tf.compat.v1.placeholder(f32, shape, name="value")
            raw.Assign(ref=acc, value=value, validate_shape=True, use_locking=True,
                       name="assign_r")
    return {n.name: n for n in graph.as_graph_def().node}


def materialize_accumulator(editor: GraphEditor, a, kind: str) -> None:
    """The surgery's accumulator (a resource handle placeholder, read by ``ReadVariableOp``
    and written by ``AssignVariableOp``) as a variable node of the graph's own kind, with the
    zeros and the initializer the init op runs."""
    template = _variable_template(kind, tuple(a.shape), a.key)
    device = editor.node(a.placeholder).device

    def node(role: str, inputs: list[str]) -> node_def_pb2.NodeDef:
        new = node_def_pb2.NodeDef()
        new.CopyFrom(template[role])
        new.name = inserted_name(a.site, role)
        del new.input[:]
        new.input.extend(inputs)
        new.device = device
        map_colocation(new, lambda name: inserted_name(a.site, name) if name in template else None)
        return new

    acc = a.placeholder
    editor.replace(node("accumulator", []))
    zeros = inserted_name(a.site, "zeros")
    editor.insert([node("zeros", []), node("initializer", [acc, zeros])], a.site)
    if kind == "ref":
        value = editor.node(a.assign).input[1]
        editor.replace(node("r", [acc]))
        editor.replace(node("assign_r", [acc, value]))


def materialize_hyperparameters(editor: GraphEditor, rewritten) -> None:
    """s, ρ, ε as ``PlaceholderWithDefault`` nodes (``svgd_rewrite/scale``, ``/rho``,
    ``/epsilon``) defaulting to the options' values: a session feeds another value to change
    one between steps (a schedule is refused: feed its value each step instead)."""
    for h, name in rewritten.hyperparameters.items():
        option = getattr(rewritten.options, h)
        if is_schedule(option):
            raise InvalidOptionError(f"{h} is a schedule, which a TF1 graph cannot call: pass "
                                     f"a number and feed {name}:0 each step instead")
        default = node_def_pb2.NodeDef(name=f"{name}/default", op="Const")
        default.attr["dtype"].type = tf.float32.as_datatype_enum
        default.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(float(option), tf.float32))
        node = node_def_pb2.NodeDef(name=name, op="PlaceholderWithDefault", input=[default.name])
        node.attr["dtype"].type = tf.float32.as_datatype_enum
        node.attr["shape"].shape.CopyFrom(tf.TensorShape([]).as_proto())
        editor.insert([default])
        editor.replace(node)


class GraphDefFrontEnd:
    """A TF1 training GraphDef in (validated, its train op found), a ``GraphDefResult`` out:
    the accumulators are variable nodes of the graph's own kind, updated by the train op and
    initialized by a new init op that the graph's init ops run too."""

    def __init__(self, graph_def: graph_pb2.GraphDef, train_op: str | None,
                 trainable: Iterable[str] | None, what: str):
        self.args = (graph_def, train_op, trainable, what)
        self.step: TF1Step | None = None

    def load(self) -> LoadedStep:
        self.step = load_graph_def(*self.args)
        return self.step.loaded

    def finish(self, loaded: LoadedStep, rewritten, report) -> GraphDefResult:
        train, graph_inits = self.step.train_op, self.step.init_ops
        editor = GraphEditor(rewritten.graph_def, rewritten.edits, copy=False)
        for a in rewritten.accumulators:
            materialize_accumulator(editor, a, self.step.variable_kind)
        materialize_hyperparameters(editor, rewritten)
        # running the train op updates the accumulators
        editor.add_control_inputs(train, [a.assign for a in rewritten.accumulators])
        init = node_def_pb2.NodeDef(name=INIT_OP, op="NoOp")
        init.input.extend("^" + a.initializer for a in rewritten.accumulators)
        editor.insert([init])
        for name in graph_inits:
            editor.add_control_inputs(name, [INIT_OP])
        gd = editor.graph_def
        return GraphDefResult(
            graph_def=gd, edits=editor.log, original_graph_def=loaded.graph_def, train_op=train, init_op=INIT_OP,
            graph_init_ops=graph_inits,
            accumulators=[(a.placeholder, a.shape) for a in rewritten.accumulators],
            accumulator_reads=[a.read for a in rewritten.accumulators],
            accumulator_init_values=[a.initial_value for a in rewritten.accumulators],
            variable_kind=self.step.variable_kind, report=report,
            graph_variables=dict(loaded.variables))


# --- files: .pb (binary GraphDef), .pbtxt (text GraphDef), .meta (MetaGraphDef + checkpoint) ---

GRAPH_SUFFIXES = (".pb", ".pbtxt", ".meta")


def read_graph_file(path: str):
    """(format, proto) of a ``.pb``, ``.pbtxt`` or ``.meta`` file; one-line LoadError else."""
    from google.protobuf import text_format
    from google.protobuf.message import DecodeError
    from tensorflow.core.protobuf import meta_graph_pb2

    fmt = os.path.splitext(path)[1].lstrip(".")
    if os.path.basename(path) == "saved_model.pb":
        raise LoadError(f"{path} is a SavedModel's file: pass the SavedModel directory")
    proto = meta_graph_pb2.MetaGraphDef() if fmt == "meta" else graph_pb2.GraphDef()
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise LoadError(f"cannot read {one_line(path)}: {e.strerror or e}") from None
    try:
        if fmt == "pbtxt":
            text_format.Parse(data.decode("utf-8"), proto)
        else:
            proto.ParseFromString(data)
    except (DecodeError, text_format.ParseError, UnicodeDecodeError, ValueError, RuntimeError) as e:
        raise LoadError(f"{one_line(path)} is corrupt or not a {fmt} file ({first_line(e, 200)}): write the "
                        "graph again") from None
    graph = proto.graph_def if fmt == "meta" else proto
    if not graph.node:
        raise LoadError(f"{path} holds an empty graph: a training graph is needed")
    return fmt, proto


def _trainable_from_meta(meta) -> list[str] | None:
    from google.protobuf.message import DecodeError
    from tensorflow.core.framework import variable_pb2

    if "trainable_variables" not in meta.collection_def:
        return None
    names = []
    for raw in meta.collection_def["trainable_variables"].bytes_list.value:
        v = variable_pb2.VariableDef()
        try:
            v.ParseFromString(raw)
        except (DecodeError, ValueError, RuntimeError):
            raise LoadError("the MetaGraph's trainable_variables collection is corrupt: export "
                            "the MetaGraph again") from None
        names.append(v.variable_name)
    return names


def _meta_with_accumulators(meta, result: GraphDefResult):
    from tensorflow.core.framework import variable_pb2
    from tensorflow.core.protobuf import meta_graph_pb2

    out = meta_graph_pb2.MetaGraphDef()
    out.CopyFrom(meta)
    out.graph_def.CopyFrom(result.graph_def)
    for (acc, _), read, zeros in zip(result.accumulators, result.accumulator_reads,
                                     result.accumulator_init_values):
        v = variable_pb2.VariableDef(
            variable_name=acc + ":0", initializer_name=zeros.replace("zeros:0", "initializer"),
            snapshot_name=read, initial_value_name=zeros,
            is_resource=result.variable_kind == "resource", trainable=False)
        out.collection_def["variables"].bytes_list.value.append(v.SerializeToString())
    return out


def _check_meta_graph(meta, path: str) -> None:
    """Refuse a MetaGraph whose collections TensorFlow cannot import (its graph was checked
    by ``load_graph_def``)."""
    from google.protobuf.message import DecodeError

    try:
        with tf.Graph().as_default():
            tf.compat.v1.train.import_meta_graph(meta, clear_devices=True)
    except IMPORT_ERRORS + (DecodeError,) as e:
        raise LoadError(f"{one_line(path)} is not a valid MetaGraph ({first_line(e, 200)}): export "
                        "it again") from None


def _write_checkpoint_state(out_dir: str, name: str) -> None:
    """The ``checkpoint`` state file naming ``name`` relative to ``out_dir`` (as ``Saver``
    writes it), so that ``tf.train.latest_checkpoint`` resolves wherever OUT_DIR moves."""
    quoted = json.dumps(name)
    with open(os.path.join(out_dir, "checkpoint"), "w") as f:
        f.write(f"model_checkpoint_path: {quoted}\nall_model_checkpoint_paths: {quoted}\n")


def _write_meta(meta, result: GraphDefResult, model_path: str, out_dir: str) -> None:
    """The output MetaGraph (accumulators in the ``variables`` collection, a Saver over every
    variable) and, when the input has a checkpoint, a checkpoint with the original values plus
    zero accumulators."""
    prefix_in = model_path[: -len(".meta")]
    prefix_out = os.path.join(out_dir, os.path.basename(prefix_in))
    has_checkpoint = os.path.exists(prefix_in + ".index")
    new_meta = _meta_with_accumulators(meta, result)
    with tf.Graph().as_default():  # the MetaGraph written keeps the graph's devices
        tf.compat.v1.train.import_meta_graph(new_meta, clear_devices=False)
        tf.compat.v1.train.Saver(tf.compat.v1.global_variables()).export_meta_graph(
            prefix_out + ".meta")
    if not has_checkpoint:
        return
    graph = tf.Graph()
    with graph.as_default():  # the values are restored and saved on this machine's devices
        tf.compat.v1.train.import_meta_graph(new_meta, clear_devices=True)
        everything = tf.compat.v1.global_variables()
        accumulators = {a + ":0" for a, _ in result.accumulators}
        saver = tf.compat.v1.train.Saver(everything)
        original = [v for v in everything if v.name not in accumulators]
        with tf.compat.v1.Session(graph=graph) as sess:
            try:
                tf.compat.v1.train.Saver(original).restore(sess, prefix_in)
            except (tf.errors.OpError, ValueError) as e:
                raise LoadError(f"the checkpoint {one_line(prefix_in)} is corrupt or does not "
                                f"match the graph ({first_line(e, 200)}): pass the checkpoint saved "
                                "with this graph") from None
            sess.run(result.init_op)
            try:
                saver.save(sess, prefix_out, write_state=False, write_meta_graph=False)
            except tf.errors.OpError as e:
                raise OutputError("cannot write the checkpoint into OUT_DIR: "
                                  f"{first_line(e, 200)}") from None
            _write_checkpoint_state(out_dir, os.path.basename(prefix_out))


KIND = "TF1 graph"


class GraphFileFrontEnd:
    """A ``.pb``/``.pbtxt``/``.meta`` training graph file in; the same format, the same file
    name (and, for a MetaGraph, its checkpoint) out."""

    def __init__(self, path: str, train_op: str | None = None):
        self.path, self.train_op = path, train_op
        self.inner: GraphDefFrontEnd | None = None
        self.fmt, self.proto = "", None

    @property
    def inputs(self) -> list[str]:
        return [self.path]

    def check(self) -> None:
        if not os.path.exists(self.path):
            raise LoadError(f"MODEL {one_line(self.path)} does not exist: give a SavedModel "
                            "directory or a .pb/.pbtxt/.meta file")
        if not os.path.isfile(self.path):
            raise LoadError(f"MODEL {one_line(self.path)} is not a regular file: give a "
                            "SavedModel directory or a .pb/.pbtxt/.meta file")
        if not self.path.endswith(GRAPH_SUFFIXES):
            raise LoadError(f"MODEL {one_line(self.path)} is a file but not a .pb, .pbtxt or "
                            ".meta graph")

    def load(self) -> LoadedStep:
        stage("load")
        self.fmt, self.proto = read_graph_file(self.path)
        graph = self.proto.graph_def if self.fmt == "meta" else self.proto
        trainable = _trainable_from_meta(self.proto) if self.fmt == "meta" else None
        self.inner = GraphDefFrontEnd(graph, self.train_op, trainable, self.path)
        return self.inner.load()

    def finish(self, loaded: LoadedStep, rewritten, report) -> GraphDefResult:
        result = self.inner.finish(loaded, rewritten, report)
        if self.fmt == "meta":
            _check_meta_graph(self.proto, self.path)
        return result

    def prepare(self, result: GraphDefResult) -> None:
        return None

    def write(self, result: GraphDefResult, prepared, out_dir: str) -> None:
        from google.protobuf import text_format

        name = os.path.basename(self.path)
        if self.fmt == "pb":
            with open(os.path.join(out_dir, name), "wb") as f:
                f.write(result.graph_def.SerializeToString(deterministic=True))
        elif self.fmt == "pbtxt":
            with open(os.path.join(out_dir, name), "w") as f:
                f.write(text_format.MessageToString(result.graph_def))
        else:
            _write_meta(self.proto, result, self.path, out_dir)

    def describe(self, options: Options) -> dict:
        """The train op, the variables' kind and the plan's report (nothing is rewritten)."""
        from .frontend import plan_step

        self.check()
        report = plan_step(self.load(), options).report
        return {"input": self.path, "kind": KIND, "train_op": self.inner.step.train_op,
                "variable_kind": self.inner.step.variable_kind, "report": report}

    def identify(self, result: GraphDefResult) -> dict:
        """What was rewritten, as the command line's JSON names it."""
        return {"kind": KIND, "train_op": result.train_op,
                "variable_kind": result.variable_kind, "init_op": result.init_op,
                "graph_init_ops": list(result.graph_init_ops)}

    def summary(self, result: GraphDefResult) -> str:
        return (f"train op: {result.train_op} ({result.variable_kind} variables); initialize "
                f"the accumulators with {result.init_op}"
                + (f" (also run by {', '.join(result.graph_init_ops)})"
                   if result.graph_init_ops else ""))
