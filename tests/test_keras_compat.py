"""Each private Keras name ``svgd_rewrite.keras_compat`` relies on, checked against the
installed Keras 3 (and, in a subprocess, tf_keras): a Keras upgrade that moves one fails here
first."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import keras
import pytest
import tensorflow as tf

from svgd_rewrite import keras_compat as compat

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _compiled_model():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss="mse", metrics=["mae"], steps_per_execution=2)
    return model


def test_flavor_of_tells_keras3_models_from_others():
    assert compat.flavor_of(_compiled_model()) == compat.KERAS3
    assert compat.flavor_of(tf.Module()) is None


def test_saveable_base_is_what_keras_savers_walk():
    from keras.src.saving import saving_lib

    base = compat.saveable_base()
    assert issubclass(keras.Model, base) and issubclass(keras.optimizers.Optimizer, base)
    assert isinstance(saving_lib.get_attr_skipset(compat.SAVER_OBJ_TYPE), (set, frozenset))


def test_compiled_state_names():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    assert not compat.is_compiled(model)  # keras.Model.compiled
    model.compile(optimizer="sgd", loss="mse", metrics=["mae"], steps_per_execution=2)
    first = compat.compiled_objects(model)  # optimizer, _compile_loss, _compile_metrics
    assert compat.is_compiled(model) and all(o is not None for o in first)
    assert compat.steps_per_execution(model) == 2
    model.compile(optimizer="sgd", loss="mse", metrics=["mae"])
    assert all(a is not b for a, b in zip(first, compat.compiled_objects(model)))


def test_reduce_per_replica_reduces_as_keras_train_function_does():
    model = _compiled_model()
    out = compat.reduce_per_replica(model, {"loss": tf.constant(1.5)})
    assert float(out["loss"]) == 1.5
    compat.count_step(model)  # Keras 3 counts steps in the optimizer: nothing to do


def test_track_makes_a_checkpoint_dependency(tmp_path):
    model = _compiled_model()
    module = tf.Module()
    module.v = tf.Variable(3.0)
    compat.track(model, "extra", module)
    path = tf.train.Checkpoint(model=model).save(str(tmp_path / "ckpt"))
    names = [name for name, _ in tf.train.list_variables(path)]
    assert any(name.startswith("model/extra/v") for name in names), names


def test_backing_variable_and_weight_name():
    model = _compiled_model()
    kernel = model.layers[0].kernel
    assert isinstance(compat.backing_variable(kernel), tf.Variable)
    assert compat.backing_variable(compat.backing_variable(kernel)) is compat.backing_variable(kernel)
    assert compat.weight_name(model, kernel) == "kernel"


def test_importing_svgd_rewrite_keras_adds_one_attribute_to_keras_model():
    """The one hook in Keras: ``keras.Model.svgd_accumulators``; no other class changes."""
    code = """
import json, inspect, keras, keras.src
classes = [c for m in list(__import__("sys").modules.values())
           if getattr(m, "__name__", "").startswith("keras") for _, c in inspect.getmembers(m, inspect.isclass)
           if c.__module__.startswith("keras")]
before = {id(c): dict(vars(c)) for c in classes}
import svgd_rewrite.keras
changed = {}
for c in classes:
    now = dict(vars(c))
    diff = sorted(k for k in set(now) | set(before[id(c)]) if now.get(k) is not before[id(c)].get(k))
    if diff:
        changed[c.__module__ + "." + c.__qualname__] = diff
print(json.dumps(changed))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": ROOT,
                                            "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    changed = json.loads(proc.stdout.strip().splitlines()[-1])
    assert changed == {"keras.src.models.model.Model": ["svgd_accumulators"]}


@pytest.mark.slow
def test_tf_keras_names():
    """The tf_keras names, in a ``TF_USE_LEGACY_KERAS=1`` process."""
    pytest.importorskip("tf_keras")
    code = """
import json, tensorflow as tf
from svgd_rewrite import keras_compat as compat
k = tf.keras
m = k.Sequential([k.Input((3,)), k.layers.Dense(2)])
out = {"flavor": compat.flavor_of(m), "compiled_before": compat.is_compiled(m)}
m.compile(optimizer="sgd", loss="mse", steps_per_execution=2)
first = compat.compiled_objects(m)
m.compile(optimizer="sgd", loss="mse")
out.update(compiled=compat.is_compiled(m), spe=compat.steps_per_execution(m),
           fresh=all(a is not b for a, b in zip(first, compat.compiled_objects(m))),
           reduced=float(compat.reduce_per_replica(m, {"loss": tf.constant(2.5)})["loss"]),
           backing=isinstance(compat.backing_variable(m.weights[0]), tf.Variable),
           name=compat.weight_name(m, m.weights[0]))
before = int(m._train_counter.numpy())
compat.count_step(m)
out["counted"] = int(m._train_counter.numpy()) - before
print(json.dumps(out))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": ROOT,
                                            "TF_USE_LEGACY_KERAS": "1",
                                            "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out == {"flavor": "tf_keras", "compiled_before": False, "compiled": True, "spe": 1,
                   "fresh": True, "reduced": 2.5, "backing": True, "name": "kernel",
                   "counted": 1}
