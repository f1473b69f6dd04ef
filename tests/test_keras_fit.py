"""Keras compile()/fit() with virtual gradients: svgd_rewrite.keras against the independent
eager oracle (tests/keras_oracle.py), callbacks, BackupAndRestore, disable."""
from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import svgd_rewrite
import svgd_rewrite.keras as svgd_keras
from helpers import assert_close
from keras_oracle import KerasOracle, conv_dense_model, model_weights, two_in_two_out_model

S = 0.01
CE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _conv_data(n=32, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, 8, 8, 1)).astype(np.float32),
            (np.arange(n) % 3).astype(np.int32))


def _two_data(n=32, seed=0):
    rng = np.random.default_rng(seed)
    x = {"a": rng.normal(size=(n, 6)).astype(np.float32),
         "b": rng.normal(size=(n, 4)).astype(np.float32)}
    y = {"cls": (np.arange(n) % 3).astype(np.int32),
         "reg": rng.normal(size=(n, 1)).astype(np.float32)}
    return x, y


class _Snapshots(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.weights = []

    def on_train_batch_end(self, batch, logs=None):
        self.weights.append(model_weights(self.model))


def _batches(x, y, batch):
    n = len(y) if not isinstance(y, dict) else len(next(iter(y.values())))
    for i in range(0, n, batch):
        sl = slice(i, i + batch)
        yield (tf.nest.map_structure(lambda t: tf.constant(t[sl]), x),
               tf.nest.map_structure(lambda t: tf.constant(t[sl]), y))


@pytest.mark.parametrize("case", ["sequential", "two_in_two_out", "steps_per_execution",
                                  "callback"])
def test_fit_matches_the_oracle(case):
    if case == "two_in_two_out":
        build, (x, y), weights = two_in_two_out_model, _two_data(), {"cls": 1.0, "reg": 0.5}
        compile_args = dict(loss={"cls": CE, "reg": keras.losses.MeanSquaredError()},
                            loss_weights=weights)
    else:
        build, (x, y), weights = conv_dense_model, _conv_data(), None
        compile_args = dict(loss=CE, metrics=["accuracy"])
    model = build()
    reference = build()
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
                  steps_per_execution=2 if case == "steps_per_execution" else 1, **compile_args)
    snaps = _Snapshots()
    callbacks = [snaps]
    if case == "callback":
        callbacks.append(svgd_keras.VirtualGradients(scale=S))
    else:
        svgd_keras.enable(model, scale=S)
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0, callbacks=callbacks)
    oracle = KerasOracle(reference, keras.optimizers.SGD(0.05, momentum=0.9), scale=S,
                         loss_weights=weights)
    wanted = []
    for xb, yb in _batches(x, y, 8):
        oracle.step(xb, yb)
        wanted.append(oracle.weights())
    if case == "steps_per_execution":  # one callback call per execution of 2 steps
        wanted = wanted[1::2]
    assert len(snaps.weights) == len(wanted) >= 2
    for i, (got, want) in enumerate(zip(snaps.weights, wanted)):
        assert_close(got, want, 1e-5, f"{case}, batch {i}")


def test_history_loss_is_the_oracles_loss_per_batch():
    """One batch per epoch, 4 epochs, with metrics and validation data: the history's training
    loss of each epoch is the oracle's loss on that step."""
    x, y = _conv_data(8)
    model, reference = conv_dense_model(1), conv_dense_model(1)
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss=CE, metrics=["accuracy"])
    state = svgd_keras.enable(model, scale=S)
    history = model.fit(x, y, batch_size=8, epochs=4, shuffle=False, verbose=0,
                        validation_data=_conv_data(8, seed=1))
    oracle = KerasOracle(reference, keras.optimizers.SGD(0.05), scale=S)
    want = [oracle.step(tf.constant(x), tf.constant(y)) for _ in range(4)]
    np.testing.assert_allclose(history.history["loss"], want, rtol=1e-5)
    assert set(history.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert [s.op for s in state.report.sites] == ["Conv2D", "MatMul"]
    assert len(state.accumulators) == 2
    assert model.evaluate(x, y, verbose=0)[0] == pytest.approx(
        float(CE(y, model.predict(x, verbose=0))), rel=1e-5)


def test_disable_restores_the_plain_step():
    x, y = _conv_data(24)
    plain, toggled = conv_dense_model(2), conv_dense_model(2)
    for m in (plain, toggled):
        m.compile(optimizer=keras.optimizers.SGD(0.05), loss=CE)
    svgd_keras.enable(toggled, scale=S)
    svgd_keras.disable(toggled)
    plain.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    toggled.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    assert_close(model_weights(toggled), model_weights(plain), 1e-7, "disabled")


class _Interrupt(keras.callbacks.Callback):
    def on_train_batch_begin(self, batch, logs=None):
        if self.epoch == 2 and batch == 1:
            raise RuntimeError("interrupted")

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch


class _Epochs(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seen = []

    def on_epoch_begin(self, epoch, logs=None):
        self.seen.append(epoch)


def test_backup_and_restore_resumes_with_the_accumulators(tmp_path):
    x, y = _conv_data(16)

    def run(callbacks, model=None):
        model = model or conv_dense_model(3)
        model.compile(optimizer=keras.optimizers.Adam(0.01), loss=CE)
        state = svgd_keras.enable(model, scale=S)
        model.fit(x, y, batch_size=8, epochs=4, shuffle=False, verbose=0, callbacks=callbacks)
        return model, state

    straight, straight_state = run([])
    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    with pytest.raises(RuntimeError, match="interrupted"):
        run([backup, _Interrupt()])
    epochs = _Epochs()
    # a model initialised differently: only a restored backup can make it end like `straight`
    resumed, resumed_state = run([keras.callbacks.BackupAndRestore(str(tmp_path / "backup")),
                                  epochs], model=conv_dense_model(99))
    assert epochs.seen == [2, 3]  # resumed after the last completed epoch
    assert_close(model_weights(resumed), model_weights(straight), 1e-6, "resumed")
    assert_close(dict(enumerate(a.numpy() for a in resumed_state.accumulators)),
                 dict(enumerate(a.numpy() for a in straight_state.accumulators)), 1e-6,
                 "accumulators")


@pytest.mark.slow
def test_saved_keras_model_loads_without_svgd_rewrite(tmp_path):
    import subprocess
    import sys

    x, y = _conv_data(16)
    model = conv_dense_model(4)
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss=CE)
    svgd_keras.enable(model, scale=S)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    model.save(str(tmp_path / "m.keras"))
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "want.npy", model.predict(x, verbose=0))
    code = ("import sys, numpy as np, keras; m = keras.models.load_model(sys.argv[1]); "
            "assert 'svgd_rewrite' not in sys.modules; "
            "np.testing.assert_allclose(m.predict(np.load(sys.argv[2]), verbose=0), "
            "np.load(sys.argv[3]), rtol=1e-6)")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "m.keras"),
                           str(tmp_path / "x.npy"), str(tmp_path / "want.npy")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_run_eagerly_and_uncompiled_models_are_refused():
    model = conv_dense_model()
    with pytest.raises(svgd_rewrite.SVGDRewriteError, match="not compiled"):
        svgd_keras.enable(model)
    model.compile(optimizer="sgd", loss=CE, run_eagerly=True)
    with pytest.raises(svgd_rewrite.SVGDRewriteError, match="run_eagerly"):
        svgd_keras.enable(model)


def test_jit_compile_and_mixed_precision_fit():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = conv_dense_model(5)
        model.compile(optimizer=keras.optimizers.SGD(0.05), loss=CE, jit_compile=True)
        state = svgd_keras.enable(model, scale=S)
        x, y = _conv_data(32)
        history = model.fit(x, y, batch_size=8, epochs=3, shuffle=False, verbose=0)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert len(state.report.sites) == 2
    assert all(np.isfinite(history.history["loss"]))
    assert all(a.dtype == "float32" for a in state.accumulators)


def test_a_custom_train_step_override_is_rewritten():
    class Custom(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(3)
            self.calls = 0

        def call(self, x):
            return self.dense(x)

        def train_step(self, data):
            self.calls += 1  # Python side effect: runs at trace time only
            x, y = data
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(CE(y, self(x, training=True))) * 2.0
            grads = tape.gradient(loss, self.trainable_weights)
            self.optimizer.apply_gradients(zip(grads, self.trainable_weights))
            return {"doubled_loss": loss}

    model = Custom()
    model.compile(optimizer=keras.optimizers.SGD(0.05))
    state = svgd_keras.enable(model, scale=S)
    x = np.random.default_rng(0).normal(size=(16, 5)).astype(np.float32)
    history = model.fit(x, np.arange(16) % 3, batch_size=8, epochs=2, verbose=0)
    assert "doubled_loss" in history.history and model.calls >= 1
    assert [s.op for s in state.report.sites] == ["MatMul"]


def test_readme_fit_example_on_digits_learns():
    pytest.importorskip("sklearn")
    from fixtures.keras_fit_example import main

    history = main(epochs=2, verbose=0)
    assert history["val_accuracy"][-1] > 0.8 and history["loss"][1] < history["loss"][0]


@pytest.mark.slow
def test_example_fit_command_prints_the_history():
    import json
    import os
    import subprocess
    import sys

    pytest.importorskip("sklearn")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-m", "svgd_rewrite", "--example-fit"],
                          capture_output=True, text=True, timeout=600, cwd=root,
                          env={**os.environ, "PYTHONPATH": root})
    assert proc.returncode == 0, proc.stderr[-2000:]
    history = json.loads(proc.stdout.strip().splitlines()[-1].removeprefix("history: "))
    assert history["val_accuracy"][-1] > 0.9


def test_train_on_batch_uses_the_rewritten_step():
    x, y = _conv_data(8)
    model, reference = conv_dense_model(6), conv_dense_model(6)
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss=CE)
    state = svgd_keras.enable(model, scale=S)
    loss = model.train_on_batch(x, y)
    oracle = KerasOracle(reference, keras.optimizers.SGD(0.05), scale=S)
    assert loss == pytest.approx(oracle.step(tf.constant(x), tf.constant(y)), rel=1e-5)
    assert state.report is not None and len(state.accumulators) == 2
    assert_close(model_weights(model), oracle.weights(), 1e-5, "train_on_batch")


def test_sample_weights_are_part_of_the_traced_data():
    """fit with sample_weight feeds (x, y, w): a new data structure, traced and rewritten;
    uniform weights train like the oracle's unweighted mean loss."""
    x, y = _conv_data(16)
    model, reference = conv_dense_model(7), conv_dense_model(7)
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss=CE)
    state = svgd_keras.enable(model, scale=S)
    model.fit(x, y, sample_weight=np.ones(16, np.float32), batch_size=8, epochs=1,
              shuffle=False, verbose=0)
    (step,) = state.steps.values()
    assert len(step.function.input_signature) == 3  # x, y and the sample weights
    oracle = KerasOracle(reference, keras.optimizers.SGD(0.05), scale=S)
    for xb, yb in _batches(x, y, 8):
        oracle.step(xb, yb)
    assert_close(model_weights(model), oracle.weights(), 1e-5, "sample weights")
