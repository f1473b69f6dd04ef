"""A Keras model file (``.keras``, ``.h5``) as MODEL.

A compiled model becomes a trainable SavedModel first (``save_trainable``): a ``train``
signature taking the model's inputs and targets and returning the loss (the model's compiled
loss and optimizer, as ``train_on_batch`` computes them), a ``serve`` signature, and the
variables by Keras path. That SavedModel is then rewritten like any other
(``KerasFileFrontEnd`` is the SavedModel front end on it). An uncompiled model, or one whose
inputs Keras cannot tell, is refused with what to do; ``show`` describes it as far as it can.
"""
from __future__ import annotations

import logging
import os
import tempfile
import warnings
from typing import Any

import tensorflow as tf

from .errors import LoadError, first_line, one_line
from .options import Options
from .savedmodel import SavedModelFrontEnd

NOT_COMPILED = ("{path} holds an uncompiled model: compile it (model.compile(optimizer=..., "
                "loss=...)) and save it again, so that the command line knows its loss and "
                "optimizer (README: Bring your own model)")
KIND = "Keras model"
SPARSE_LOSSES = ("sparse_categorical_crossentropy", "SparseCategoricalCrossentropy")


def _quiet_load(path: str, compile: bool):
    """``keras.models.load_model`` with Python warnings (zipfile's on odd member names,
    Keras's own) kept off stderr: ``show`` prints one report, ``--json`` one object."""
    import keras

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return keras.models.load_model(path, compile=compile)


def load_keras_file(path: str) -> tuple[Any, str | None]:
    """(model, None) compiled as saved; or (model, why) when Keras can read the weights but
    not the training configuration (a Keras 3 ``.h5`` compiled with ``loss="mse"``)."""
    try:
        model = _quiet_load(path, compile=True)
        return model, (None if getattr(model, "optimizer", None) is not None
                       else "not compiled")
    except Exception as e:  # Keras raises many types: all mean "cannot load"
        first = first_line(e, 200)
    try:
        return _quiet_load(path, compile=False), f"Keras cannot read it back: {first}"
    except Exception:  # noqa: BLE001 - the same: cannot load
        raise LoadError(f"cannot load the Keras model {one_line(path)}: {first}") from None


def _arg_name(name: str, taken: set[str]) -> str:
    base = "".join(c if c.isalnum() or c == "_" else "_" for c in name).strip("_") or "input"
    name, k = base, 1
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    taken.add(name)
    return name


def _structure(model, which: str):
    """``model.input`` / ``model.output`` (a loaded Sequential has only the flat lists)."""
    try:
        return getattr(model, which)
    except (AttributeError, ValueError):
        flat = getattr(model, which + "s")
        return flat[0] if len(flat) == 1 else list(flat)


def _is_sparse(loss) -> bool:
    name = loss if isinstance(loss, str) else getattr(loss, "__name__", type(loss).__name__)
    return any(s in str(name) for s in SPARSE_LOSSES)


def _target_specs(model, taken: set[str]) -> list[tf.TensorSpec]:
    """One target per output: class ids (int32, the output's shape without its last axis) for
    a sparse categorical loss, else the output's shape and dtype."""
    outputs = model.outputs
    names = getattr(model, "output_names", None) or [f"{k}" for k in range(len(outputs))]
    losses = model.loss
    if isinstance(losses, dict):
        losses = [losses.get(name) for name in names]
    elif not isinstance(losses, (list, tuple)):
        losses = [losses] * len(outputs)
    specs = []
    for out, name, loss in zip(outputs, names, losses):
        arg = _arg_name(f"y_{name}" if len(outputs) > 1 else "y", taken)
        if _is_sparse(loss):
            specs.append(tf.TensorSpec(out.shape[:-1], tf.int32, name=arg))
        else:
            specs.append(tf.TensorSpec(out.shape, out.dtype, name=arg))
    return specs


def trainable_module(model) -> tuple[tf.Module, dict]:
    """A ``tf.Module`` with ``train`` and ``serve`` for a compiled functional or Sequential
    model, and its signatures. The arguments are ``x`` and ``y`` for one input and one output;
    otherwise each input's name and ``y_<output name>``."""
    if not getattr(model, "inputs", None) or not getattr(model, "outputs", None):
        raise LoadError(f"the Keras model {model.name!r} has no fixed inputs (a subclassed "
                        "model): write a SavedModel with a train tf.function instead "
                        "(README: Bring your own model)")
    taken: set[str] = set()
    inputs, outputs = _structure(model, "input"), _structure(model, "output")
    flat = tf.nest.flatten(inputs)
    x_specs = [tf.TensorSpec(t.shape, t.dtype,
                             name=_arg_name("x" if len(flat) == 1 else t.name, taken))
               for t in flat]
    y_specs = _target_specs(model, taken)
    optimizer = model.optimizer
    if not optimizer.built:
        optimizer.build(model.trainable_variables)
    n = len(x_specs)

    def train(*args):
        x = tf.nest.pack_sequence_as(inputs, list(args[:n]))
        y = tf.nest.pack_sequence_as(outputs, list(args[n:]))
        with tf.GradientTape() as tape:
            y_pred = model(x, training=True)
            loss = model.compute_loss(x=x, y=y, y_pred=y_pred, training=True)
            scaled = optimizer.scale_loss(loss)
        weights = model.trainable_variables
        optimizer.apply_gradients(zip(tape.gradient(scaled, weights), weights))
        return {"loss": loss}

    def serve(*args):
        return model(tf.nest.pack_sequence_as(inputs, list(args)), training=False)

    module = tf.Module(name="keras_model")
    module.variables_by_path = {v.path: v.value for v in model.variables}
    module.optimizer_variables = [v.value for v in optimizer.variables]
    module.train = tf.function(train, input_signature=x_specs + y_specs, autograph=False)
    module.serve = tf.function(serve, input_signature=x_specs, autograph=False)
    return module, {"train": module.train.get_concrete_function(),
                    "serve": module.serve.get_concrete_function()}


def save_trainable(model, directory: str) -> None:
    """``trainable_module(model)`` saved as a SavedModel in ``directory``."""
    module, signatures = trainable_module(model)
    tf.saved_model.save(module, directory, signatures=signatures,
                        options=tf.saved_model.SaveOptions(experimental_custom_gradients=False))


class _DropCustomGradientNotes(logging.Filter):
    """TensorFlow's note, on loading the SavedModel made here, that the optimizer's update
    functions were saved without their custom gradients (no gradient of them is taken)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "unsaved custom gradients" not in record.getMessage()


class KerasFileFrontEnd(SavedModelFrontEnd):
    """A compiled Keras model file: rewritten as the trainable SavedModel made from it (in a
    temporary directory of its own, removed with the front end)."""

    def __init__(self, path: str):
        super().__init__(path, "train")
        self.path = path
        self._tmp: tempfile.TemporaryDirectory | None = None

    @property
    def inputs(self) -> list[str]:
        return [self.path]

    def check(self) -> None:
        if not os.path.isfile(self.path):
            raise LoadError(f"MODEL {one_line(self.path)} is not a Keras model file")

    def _trainable(self, loaded: tuple | None = None) -> None:
        """Write the model's trainable SavedModel (once); ``loaded``: ``load_keras_file``'s
        answer when the caller has it already."""
        if self._tmp is not None:
            return
        model, why = loaded or load_keras_file(self.path)
        if why is not None:
            raise LoadError(NOT_COMPILED.format(path=one_line(self.path)) if why == "not compiled"
                            else f"{one_line(self.path)}: {why}; compile and save it again "
                                 "as .keras (README: Bring your own model)")
        self._tmp = tempfile.TemporaryDirectory(prefix="svgd_keras_")
        self.model_dir = os.path.join(self._tmp.name, "trainable")
        try:
            save_trainable(model, self.model_dir)
        except LoadError:
            raise
        except Exception as e:  # Keras and TensorFlow raise many types: all mean "cannot"
            raise LoadError(f"cannot make a trainable SavedModel of {one_line(self.path)} "
                            f"({first_line(e, 160)}): write one with a train tf.function "
                            "(README: Bring your own model)") from None

    def load(self):
        self._trainable()
        quiet = _DropCustomGradientNotes()
        logging.getLogger("tensorflow").addFilter(quiet)
        try:
            return super().load()
        finally:
            logging.getLogger("tensorflow").removeFilter(quiet)

    def describe(self, options: Options) -> dict:
        """As a SavedModel's (the trainable one), with the Keras model's name, optimizer,
        loss and kernels; an uncompiled model: its kernels and what to do."""
        model, why = load_keras_file(self.path)
        kernels = [w.path for w in model.trainable_weights if len(w.shape) >= 2]
        keras_info = {"kind": KIND, "model": model.name, "loss": str(getattr(model, "loss", None)),
                      "kernels": kernels}
        if why is None:
            self._trainable((model, why))
            shown = super().describe(options)
            return {**shown, **keras_info, "input": self.path,
                    "optimizer": type(model.optimizer).__name__}
        return {"input": self.path, **keras_info,
                "optimizer": "not compiled" if why == "not compiled" else f"not restored ({why})",
                "notes": [f"{len(kernels)} kernel(s) would get virtual gradients once the "
                          "model is compiled: " + ", ".join(kernels[:8])
                          + (", ..." if len(kernels) > 8 else ""),
                          NOT_COMPILED.format(path="this file")]}

    def identify(self, result) -> dict:
        return {**super().identify(result), "kind": KIND}

    def summary(self, result) -> str:
        return f"Keras model {os.path.basename(self.path)}: " + super().summary(result)
