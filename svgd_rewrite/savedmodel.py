"""SavedModel in, SavedModel out: the train function rewritten by the same pipeline.

The output holds every variable of the input plus the accumulators, the rewritten train
function under the same name (and signature key), every other function and signature of the
input unchanged, and ``svgd_report.json``.
"""
from __future__ import annotations

import errno
import inspect
import logging
import os
import re
from dataclasses import dataclass, field
from typing import Any

import tensorflow as tf
from google.protobuf.message import DecodeError
from tensorflow.core.protobuf import saved_model_pb2

from .variables import trains
from .frontend import accumulator_variables
from .edits import EditLog
from .step import SVGDStep
from .errors import (LoadError, NoGradientsError, SVGDRewriteError, first_line,
                     one_line)
from .load import LoadedStep, load_concrete_function
from .options import Options
from .validate import check_library
from .progress import stage
from .report import Report

log = logging.getLogger(__name__)


@dataclass
class TrainFunction:
    """The function chosen for rewriting: an attribute, a signature, or both."""

    attribute: str | None
    signature: str | None
    concrete: Any

    @property
    def name(self) -> str:
        return self.attribute or self.signature or "?"


@dataclass
class SavedModelResult:
    report: Report
    function: TrainFunction
    out_dir: str | None
    graph_def: Any = None  # the rewritten GraphDef
    original_graph_def: Any = None
    graph_variables: dict = field(default_factory=dict)  # RewriteResult: accumulators included
    exported: Any = None  # an ExportResult when graphs were exported
    edits: EditLog = field(default_factory=EditLog)  # RewriteResult: what the rewrite changed

    def to_dict(self) -> dict:
        d = self.report.to_dict()
        d["function"] = self.function.attribute
        d["signature"] = self.function.signature
        return d


KIND = "SavedModel (TF2)"


def _chosen_fields(chosen: TrainFunction | None) -> dict:
    """``function`` (the attribute, else the signature key) and ``signature`` (its key)."""
    return {"function": chosen.name if chosen is not None else None,
            "signature": chosen.signature if chosen is not None else None}


class SavedModelFrontEnd:
    """A SavedModel's train function in, a ``SavedModelResult`` out (the SVGDStep to save is
    built from ``loaded`` and ``rewritten`` when the output is written)."""

    def __init__(self, model_dir: str, function: str | None):
        self.model_dir, self.function = model_dir, function
        self.chosen: TrainFunction | None = None
        self.saved = self.variables = self.loaded = self.rewritten = None

    def load(self):
        stage("load")
        self.saved = load_saved_model(self.model_dir)
        self.variables = saved_variables(self.saved)
        self.chosen = choose_train_function(self.saved, self.function, self.variables)
        self.loaded = load_concrete_function(self.chosen.concrete, self.variables)
        return self.loaded

    def finish(self, loaded, rewritten, report) -> "SavedModelResult":
        self.rewritten = rewritten
        return SavedModelResult(
            report=report, function=self.chosen, out_dir=None, graph_def=rewritten.graph_def,
            original_graph_def=loaded.graph_def, edits=rewritten.edits,
            graph_variables=accumulator_variables(loaded, rewritten))

    @property
    def inputs(self) -> list[str]:
        return [self.model_dir]

    def check(self) -> None:
        check_saved_model_dir(self.model_dir)

    def prepare(self, result: "SavedModelResult") -> tuple[tf.Module, dict]:
        return _saved_root(self, result.report)

    def write(self, result: "SavedModelResult", prepared, out_dir: str) -> None:
        """The SavedModel: every variable of the input plus the accumulators, the rewritten
        train function under its name and signature key, every other function unchanged."""
        _save(*prepared, out_dir)

    def describe(self, options: Options) -> dict:
        return describe_saved_model(self.model_dir, self.function, options)

    def identify(self, result: "SavedModelResult") -> dict:
        """What was rewritten, as the command line's JSON names it."""
        return {"kind": KIND, **_chosen_fields(result.function)}

    def summary(self, result: "SavedModelResult") -> str:
        return (f"function: {result.function.name}"
                + (f" (signature {result.function.signature!r})" if result.function.signature
                   else ""))


def check_saved_model_dir(model_dir: str) -> None:
    """Refuse, with what to do, anything that is not a readable SavedModel directory."""
    if not os.path.exists(model_dir):
        raise LoadError(f"MODEL_DIR {model_dir} does not exist: give the path of a SavedModel "
                        "directory")
    if not os.path.isdir(model_dir):
        raise LoadError(f"MODEL_DIR {model_dir} is a file, not a directory: give the SavedModel "
                        "directory (the one holding saved_model.pb)")
    pb = os.path.join(model_dir, "saved_model.pb")
    if not os.path.isfile(pb):
        raise LoadError(f"{model_dir} holds no saved_model.pb: it is not a SavedModel "
                        "(write one with tf.saved_model.save)")
    proto = saved_model_pb2.SavedModel()
    try:
        with open(pb, "rb") as f:
            proto.ParseFromString(f.read())
    except OSError as e:
        raise LoadError(f"{one_line(pb)} cannot be read ({e.strerror or first_line(e)}): "
                        "check its permissions") from None
    except (DecodeError, ValueError, RuntimeError) as e:
        raise LoadError(f"{one_line(pb)} is corrupt ({first_line(e)}): "
                        "save the model again") from None
    if not proto.meta_graphs or not proto.meta_graphs[0].HasField("object_graph_def"):
        raise LoadError(f"{pb} is empty or not a TF2 SavedModel: save the model again with "
                        "tf.saved_model.save")
    for meta in proto.meta_graphs:
        check_library(meta.graph_def.library, pb)
    index = os.path.join(model_dir, "variables", "variables.index")
    if not os.path.isfile(index):
        raise LoadError(f"{model_dir} has no variables/variables.index: the variables folder "
                        "is missing; copy the whole SavedModel directory")


def load_saved_model(model_dir: str) -> Any:
    """Check and load a SavedModel; every failure becomes a one-line ``LoadError``."""
    check_saved_model_dir(model_dir)
    try:
        return tf.saved_model.load(model_dir)
    except Exception as e:  # TensorFlow raises many types here; all mean "cannot load"
        raise LoadError(f"cannot load the SavedModel in {one_line(model_dir)}: "
                        f"{first_line(e, 300)}") from None


def saved_variables(obj) -> list[tf.Variable]:
    """Every variable reachable from the loaded object."""
    seen, out = set(), []
    for d in tf.train.TrackableView(obj).descendants():
        if isinstance(d, tf.Variable) and id(d) not in seen:
            seen.add(id(d))
            out.append(d)
    return out


def _functions(obj) -> dict[str, Any]:
    children = tf.train.TrackableView(obj).children(obj)
    return {name: child for name, child in sorted(children.items())
            if isinstance(child, tf.types.experimental.PolymorphicFunction)}


def _single_concrete(name: str, fn) -> Any:
    concretes = list(getattr(fn, "concrete_functions", []))
    if len(concretes) != 1:
        raise LoadError(f"function {name!r} has {len(concretes)} traces in the SavedModel: save "
                        "the train function with an input_signature")
    return concretes[0]


def _traced_name(function_name) -> str:
    """``__inference__train_182`` -> ``_train``: the Python function a trace came from."""
    name = function_name.decode() if isinstance(function_name, bytes) else str(function_name)
    return re.sub(r"_\d+$", "", name.removeprefix("__inference_"))


def _wraps(signature_cf, train_cf) -> bool:
    """True when a signature function calls a trace of the same Python function as train."""
    target = _traced_name(train_cf.name)
    return any(n.op in ("PartitionedCall", "StatefulPartitionedCall")
               and _traced_name(n.attr["f"].func.name) == target
               for n in signature_cf.graph.as_graph_def().node)


def choose_train_function(obj, name: str | None, variables: list[tf.Variable]) -> TrainFunction:
    """``name`` (an attribute or signature key), else ``train``, else the only function that
    trains; a one-line error lists the candidates otherwise."""
    functions = _functions(obj)
    signatures = dict(getattr(obj, "signatures", {}) or {})
    candidates = ", ".join(sorted(set(functions) | {f"signature:{k}" for k in signatures})) or "none"

    def by_attribute(attr: str) -> TrainFunction:
        cf = _single_concrete(attr, functions[attr])
        sig = attr if attr in signatures else next(
            (k for k, s in sorted(signatures.items()) if _wraps(s, cf)), None)
        return TrainFunction(attr, sig, cf)

    if name is not None:
        if name in functions:
            return by_attribute(name)
        if name in signatures:
            return TrainFunction(None, name, signatures[name])
        raise LoadError(f"the SavedModel has no function or signature named {name!r}: choose "
                        f"--function from: {candidates}")
    if "train" in functions:
        return by_attribute("train")
    if "train" in signatures:
        return TrainFunction(None, "train", signatures["train"])
    training = []
    for attr in functions:
        try:
            cf = _single_concrete(attr, functions[attr])
            if trains(load_concrete_function(cf, variables)):
                training.append(attr)
        except SVGDRewriteError:
            continue
    if len(training) == 1:
        return by_attribute(training[0])
    if not training:
        raise NoGradientsError(f"no function of the SavedModel computes gradients (candidates: "
                               f"{candidates}): an inference-only export (model.export, "
                               "serving signatures) cannot be rewritten; save the module with a "
                               "train tf.function that applies gradients (README: Bring your own "
                               "model)")
    raise LoadError(f"several functions train ({', '.join(training)}): choose one with --function")


def _describe_inputs(cf) -> list[str]:
    signature = cf.structured_input_signature
    args, kwargs = signature if signature is not None else ((), {})
    out = []
    for k, spec in enumerate(tf.nest.flatten((args, kwargs))):
        name = getattr(spec, "name", None) or f"arg_{k}"
        shape = getattr(spec, "shape", None)
        dims = ("?" if d is None else str(d) for d in shape) if shape is not None and \
            shape.rank is not None else ("...",)
        dtype = getattr(getattr(spec, "dtype", None), "name", "?")
        out.append(f"{name}: {dtype}[{','.join(dims)}]")
    return out


def describe_saved_model(model_dir: str, function: str | None, options: Options) -> dict:
    """What ``svgd-rewrite show`` prints: every function and signature with its inputs, the one
    a rewrite would choose and why, and the dry run's report (``None`` when nothing trains)."""
    from .frontend import plan_step

    obj = load_saved_model(model_dir)
    variables = saved_variables(obj)
    functions = _functions(obj)
    signatures = dict(getattr(obj, "signatures", {}) or {})
    try:
        chosen = choose_train_function(obj, function, variables)
        why = ("--function" if function else "the attribute named train" if chosen.attribute ==
               "train" else "the signature named train" if chosen.signature == "train" and
               not chosen.attribute else "the only function that applies gradients")
        report = plan_step(load_concrete_function(chosen.concrete, variables), options).report
        notes = []
    except NoGradientsError as e:
        chosen, why, report, notes = None, "", None, [f"nothing to rewrite: {e}"]
    rows = []
    for name, fn in functions.items():
        concretes = list(getattr(fn, "concrete_functions", []))
        rows.append({"kind": "function", "name": name,
                     "inputs": _describe_inputs(concretes[0]) if len(concretes) == 1 else
                     [f"{len(concretes)} traces"],
                     "chosen": chosen is not None and chosen.attribute == name,
                     "note": ("would be rewritten: " + why) if chosen is not None and
                     chosen.attribute == name else ""})
    for key, sig in sorted(signatures.items()):
        rows.append({"kind": "signature", "name": key, "inputs": _describe_inputs(sig),
                     "chosen": chosen is not None and chosen.signature == key,
                     "note": ("rewritten with it" if chosen is not None and chosen.attribute
                              else "would be rewritten: " + why)
                     if chosen is not None and chosen.signature == key else ""})
    return {"input": model_dir, "kind": KIND, "functions": rows, **_chosen_fields(chosen),
            "notes": notes, "report": report}


def _signature_wrapper(step: SVGDStep, loaded: LoadedStep, sig_cf) -> Any:
    """A signature (keyword inputs, dict outputs) that calls the rewritten train function."""
    sig_args = sig_cf.structured_input_signature[1]
    positional = loaded.call.input_signature[:loaded.call.n_positional]
    names = [getattr(s, "name", None) for s in positional] + list(loaded.call.keyword_names)
    if not all(n in sig_args for n in names) or len(names) != len(sig_args):
        raise LoadError("the train signature's inputs do not match the train function's "
                        "arguments: re-save the model with signatures from the train function")
    out_keys = sorted(sig_cf.structured_outputs)
    order = sorted(sig_args)

    def signature(*values):
        kw = dict(zip(order, values))
        result = step.function(*[kw[n] for n in names])
        if isinstance(result, dict):
            out = dict(result)
        else:
            out = {f"output_{i}": t for i, t in enumerate(tf.nest.flatten(result))}
        if sorted(out) != out_keys:
            raise LoadError("the train signature's outputs do not match the train function's")
        return out

    signature.__signature__ = inspect.Signature(
        [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in order])
    fn = tf.function(signature, input_signature=[sig_args[n] for n in order], autograph=False)
    return fn.get_concrete_function()


def _saved_root(front: "SavedModelFrontEnd", report: Report) -> tuple[tf.Module, dict]:
    """The module to save: the input's children with the chosen function rewritten, the
    SVGD step (its accumulators) and the variables; the signatures, the chosen one
    rewritten."""
    loaded, rewritten = front.loaded, front.rewritten
    obj, chosen, variables = front.saved, front.chosen, front.variables
    step = SVGDStep(loaded, rewritten, report)
    root = tf.Module(name="svgd_saved_model")
    for name, child in sorted(tf.train.TrackableView(obj).children(obj).items()):
        setattr(root, name, step.function if name == chosen.attribute else child)
    root.svgd_step = step
    root.svgd_variables = variables
    probe = _traced_probe(step)
    if probe is not None:
        root.svgd_diagnostics = probe
    signatures = {}
    for key, sig in sorted((getattr(obj, "signatures", {}) or {}).items()):
        if key == chosen.signature:
            signatures[key] = (step.function.get_concrete_function() if chosen.attribute is None
                               else _signature_wrapper(step, loaded, sig))
        else:
            signatures[key] = sig
    return root, signatures


def _traced_probe(step: SVGDStep):
    """The step's diagnostics probe (per variable, ‖virtual gradient‖/‖gradient‖ on a batch),
    traced for the train function's signature; None where it cannot be (a site the probe
    cannot cut out, a step TensorFlow cannot trace it for)."""
    try:
        probe = step.probe_function()
        if probe is not None:
            probe.get_concrete_function()
        return probe
    except (tf.errors.OpError, ValueError, TypeError):  # an optional extra: never fatal
        return None


def _save(root: tf.Module, signatures: dict, tmp: str) -> None:
    """``tf.saved_model.save`` into the staging directory, its failures as the tool's errors."""
    # Keras optimizers' update functions carry custom gradients that cannot be saved.
    try:
        tf.saved_model.save(root, tmp, signatures=signatures or None,
                            options=tf.saved_model.SaveOptions(
                                experimental_custom_gradients=False))
    except tf.errors.ResourceExhaustedError as e:
        raise OSError(errno.ENOSPC, f"no space left ({first_line(e, 120)})") from None
    except tf.errors.OpError as e:
        raise OSError(errno.EIO, first_line(e, 200)) from None
    except ValueError as e:  # names TensorFlow's saver refuses (e.g. hostile variables)
        raise LoadError(f"TensorFlow cannot save this model again ({first_line(e, 200)}): "
                        "rename its variables to plain names") from None
