"""Every Keras name ``svgd_rewrite.keras`` relies on beyond Keras's public API, in one place.

Two Kerases train models in TensorFlow: Keras 3 (``keras``) and tf_keras (Keras 2, what
``tf.keras`` is under ``TF_USE_LEGACY_KERAS=1``). A ``Flavor`` answers, for a model of either,
the questions the glue asks; each private name below has a test against the installed
versions (``tests/test_keras_compat.py``), so that a Keras upgrade that moves one fails there
first. Nothing here imports tf_keras unless a tf_keras model is passed.
"""
from __future__ import annotations

import importlib
from typing import Any

import tensorflow as tf

KERAS3, TF_KERAS = "keras", "tf_keras"

# Keras 3's saver walks an object's attributes unless its ``_obj_type()`` names a skip list;
# "Loss" has the smallest (it walks nothing of ours): see ``keras.src.saving.saving_lib``.
SAVER_OBJ_TYPE = "Loss"


def flavor_of(model: Any) -> str | None:
    """``KERAS3`` or ``TF_KERAS`` for a model of either, else ``None`` (checked by class,
    without importing tf_keras)."""
    for cls in type(model).__mro__:
        root = cls.__module__.split(".")[0]
        if cls.__name__ == "Model" and root == "keras" and cls.__module__.startswith(
                "keras.src.models"):
            return KERAS3
        if cls.__name__ == "Model" and root in ("tf_keras", "keras_2"):
            return TF_KERAS
    return None


def saveable_base() -> type:
    """Keras 3's base class of what its savers walk (``_obj_type``, ``save_own_variables``,
    ``load_own_variables``): an object outside it is skipped by ``save_weights`` and
    ``model.save``."""
    from keras.src.saving.keras_saveable import KerasSaveable

    return KerasSaveable


def is_compiled(model: Any) -> bool:
    if flavor_of(model) == TF_KERAS:
        return bool(getattr(model, "_is_compiled", False))
    return bool(getattr(model, "compiled", False))


def compiled_objects(model: Any) -> tuple:
    """What ``compile()`` creates anew each time: the optimizer and the loss and metrics
    containers."""
    if flavor_of(model) == TF_KERAS:
        return (model.optimizer, model.compiled_loss, model.compiled_metrics)
    return (model.optimizer, getattr(model, "_compile_loss", None),
            getattr(model, "_compile_metrics", None))


def steps_per_execution(model: Any) -> int:
    if flavor_of(model) == TF_KERAS:
        return int(model._steps_per_execution.numpy())
    return int(model.steps_per_execution)


def reduce_per_replica(model: Any, outputs: Any) -> Any:
    """Keras's reduction of a replicated step's outputs, as its own train function does."""
    strategy = model.distribute_strategy
    if flavor_of(model) == TF_KERAS:
        training = importlib.import_module("tf_keras.src.engine.training")
        return training.reduce_per_replica(outputs, strategy,
                                           reduction=model.distribute_reduction_method)
    from keras.src.backend.tensorflow.trainer import reduce_per_replica as reduce

    return reduce(outputs, strategy, reduction="auto")


def count_step(model: Any) -> None:
    """What Keras's train function does after each step besides the step (tf_keras counts
    steps in ``_train_counter``; Keras 3 counts in the optimizer)."""
    if flavor_of(model) == TF_KERAS:
        model._train_counter.assign_add(1)


def track(model: Any, name: str, trackable: tf.Module) -> None:
    """Make ``trackable`` a dependency of ``model`` for TensorFlow checkpoints
    (``tf.train.Checkpoint(model=...)``, tf_keras's TF-format ``save_weights``)."""
    model._track_trackable(trackable, name=name, overwrite=True)


def backing_variable(weight: Any) -> tf.Variable:
    """The ``tf.Variable`` behind a model weight (Keras 3 wraps it; tf_keras does not)."""
    return weight if isinstance(weight, tf.Variable) else weight.value


def weight_name(model: Any, weight: Any) -> str:
    """A weight's short name (tf_keras's carry the scope and ``:0``)."""
    name = weight.name
    if flavor_of(model) == TF_KERAS:
        name = name.split(":")[0].rsplit("/", 1)[-1]
    return name
