"""A training lifecycle, not one fit: retraces, recompiles, frozen layers, disable during fit,
and every saver's resume — the accumulators are the model's state, one per trained variable,
matched by name (against the Keras oracle, or against the uninterrupted run and plain Keras's
own resume on the same path)."""
from __future__ import annotations

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import svgd_rewrite
import svgd_rewrite.keras as svgd_keras
from helpers import assert_close, rel_error
from keras_oracle import KerasOracle, _key, conv_dense_model

S = 0.01
CE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _data(n=40, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, 8, 8, 1)).astype(np.float32),
            (np.arange(n) % 3).astype(np.int32))


def _all_weights(model) -> dict[str, np.ndarray]:
    return {_key(w): w.numpy() for w in model.weights}


def _batches(x, y, size):
    return [(tf.constant(x[i:i + size]), tf.constant(y[i:i + size]))
            for i in range(0, len(x), size)]


def test_retrace_sequence_keeps_one_accumulator_per_kernel():
    """fit → train_on_batch → fit(sample_weight=…) (three traces of one train function,
    the first fit with a short last batch): oracle-equal, one accumulator per kernel."""
    x, y = _data(40)
    model, reference = conv_dense_model(10), conv_dense_model(10)
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), loss=CE,
                  metrics=["accuracy"])
    svgd = svgd_keras.enable(model, scale=S)
    oracle = KerasOracle(reference, keras.optimizers.SGD(0.05, momentum=0.9), scale=S)
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)  # 16, 16, 8
    for xb, yb in _batches(x, y, 16):
        oracle.step(xb, yb)
    model.train_on_batch(x[:8], y[:8])
    oracle.step(tf.constant(x[:8]), tf.constant(y[:8]))
    model.fit(x, y, sample_weight=np.ones(40, np.float32), batch_size=16, epochs=1,
              shuffle=False, verbose=0)
    for xb, yb in _batches(x, y, 16):
        oracle.step(xb, yb)
    assert len(svgd.accumulators) == 2
    assert sorted(svgd.state.accumulators) == ["weights.0.kernel", "weights.2.kernel"]
    assert len(svgd.steps) >= 3
    assert_close(_all_weights(model), oracle.weights(), 1e-5, "retraces")
    want = {k: r.numpy() for k, r in oracle.r.items()}
    got = {"conv/kernel": svgd.state.accumulators["weights.0.kernel"].numpy(),
           "dense/kernel": svgd.state.accumulators["weights.2.kernel"].numpy()}
    assert_close(got, want, 1e-5, "accumulators")


def test_fine_tuning_freeze_recompile_unfreeze():
    """Freeze the base, compile, fit; unfreeze, compile again (new optimizer, metrics), fit:
    each compile rewrites the step anew; a frozen kernel is never a site; the loss logged is
    the real one."""
    x, y = _data(32)
    model, reference = conv_dense_model(11), conv_dense_model(11)
    oracle = KerasOracle(reference, keras.optimizers.SGD(0.05), scale=S)
    model.layers[0].trainable = False
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss=CE, metrics=["accuracy"])
    svgd = svgd_keras.enable(model, scale=S)
    first = model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    assert [s.variable.split("/")[-2] for s in svgd.report.sites] == ["dense"]
    assert svgd.report.memory.params == 4 * 36 * 3 + 3  # the dense layer only
    oracle.frozen = {"conv/kernel", "conv/bias"}
    want_first = [oracle.step(xb, yb) for xb, yb in _batches(x, y, 16)]
    model.layers[0].trainable = True
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss=CE, metrics=["accuracy"])
    second = model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    assert [s.op for s in svgd.report.sites] == ["Conv2D", "MatMul"]
    oracle.frozen, oracle.optimizer = set(), keras.optimizers.Adam(0.01)
    want_second = [oracle.step(xb, yb) for xb, yb in _batches(x, y, 16)]
    assert first.history["loss"][0] == pytest.approx(np.mean(want_first), rel=1e-5)
    assert second.history["loss"][0] == pytest.approx(np.mean(want_second), rel=1e-5)
    assert second.history["accuracy"][0] > 0
    assert_close(_all_weights(model), oracle.weights(), 1e-5, "fine-tuned")


def test_disable_from_a_callback_takes_effect_at_the_next_step():
    x, y = _data(48)
    model, reference = conv_dense_model(12), conv_dense_model(12)
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss=CE)
    svgd_keras.enable(model, scale=S)

    class Off(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 1:
                svgd_keras.disable(self.model)

    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0, callbacks=[Off()])
    assert svgd_keras.enabled(model) is None
    oracle = KerasOracle(reference, keras.optimizers.SGD(0.05), scale=S)
    for i, (xb, yb) in enumerate(_batches(x, y, 8)):
        oracle.step(xb, yb, svgd=i <= 1)
    assert_close(_all_weights(model), oracle.weights(), 1e-5, "disabled after batch 1")


def test_identity_transform_fit_equals_plain_keras():
    x, y = _data(32)
    plain, enabled = conv_dense_model(13), conv_dense_model(13)
    for m in (plain, enabled):
        m.compile(optimizer=keras.optimizers.Adam(0.01), loss=CE, metrics=["accuracy"])
    svgd_keras.enable(enabled, transform="identity")
    h1 = plain.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    h2 = enabled.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    assert_close(_all_weights(enabled), _all_weights(plain), 1e-6, "identity")
    np.testing.assert_allclose(h2.history["loss"], h1.history["loss"], rtol=1e-6)


def test_lazy_submodule_and_misuse_errors():
    import importlib

    import svgd_rewrite as top

    assert importlib.import_module("svgd_rewrite.keras").enable is top.keras.enable
    with pytest.raises(svgd_rewrite.InvalidOptionError, match="unexpected keyword"):
        top.keras.enable(conv_dense_model(), foo=1)
    with pytest.raises(svgd_rewrite.InvalidOptionError, match="scale"):
        svgd_keras.VirtualGradients(scale=1e-46)
    # fit on an uncompiled model stops in Keras before any callback runs: Keras's own
    # one-line error, as without the callback
    with pytest.raises(ValueError, match="compile"):
        conv_dense_model().fit(*_data(8), verbose=0, callbacks=[svgd_keras.VirtualGradients()])


def test_virtual_gradients_callback_disables_after_fit_unless_kept():
    x, y = _data(16)
    model = conv_dense_model(14)
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss=CE)
    callback = svgd_keras.VirtualGradients(scale=S)
    model.fit(x, y, batch_size=8, verbose=0, callbacks=[callback])
    assert svgd_keras.enabled(model) is None and len(callback.svgd.accumulators) == 2
    kept = svgd_keras.VirtualGradients(scale=S, keep=True)
    model.fit(x, y, batch_size=8, verbose=0, callbacks=[kept])
    assert svgd_keras.enabled(model) is kept.svgd


# --- resume from every saver ---------------------------------------------------------------

def _ln_model(seed: int) -> keras.Model:
    """LayerNorm → Dense → Dense: the LayerNorm's slots come first in the optimizer."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((6,)), keras.layers.LayerNormalization(name="ln"),
                             keras.layers.Dense(8, activation="tanh", name="hidden"),
                             keras.layers.Dense(3, name="out")])


def _bn_model(seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((8, 8, 1)),
                             keras.layers.Conv2D(4, 3, use_bias=False, name="conv"),
                             keras.layers.BatchNormalization(name="bn"),
                             keras.layers.ReLU(), keras.layers.Flatten(),
                             keras.layers.Dense(3, name="out")])


OPTIMIZERS = {"sgd": lambda: keras.optimizers.SGD(0.05),
              "momentum": lambda: keras.optimizers.SGD(0.05, momentum=0.9),
              "adam": lambda: keras.optimizers.Adam(0.01)}


def _resume_data(kind):
    rng = np.random.default_rng(5)
    shape = (48, 6) if kind == "ln" else (48, 8, 8, 1)
    return rng.normal(size=shape).astype(np.float32), (np.arange(48) % 3).astype(np.int32)


def _run_resume(kind: str, optimizer: str, saver: str, tmp, svgd: bool) -> float:
    """Relative difference between 2 epochs in a row and 1 epoch, a save, a new model
    restored by ``saver`` and 1 more epoch (with SVGD enabled, or plain Keras)."""
    build = _ln_model if kind == "ln" else _bn_model
    x, y = _resume_data(kind)
    tmp.mkdir(parents=True, exist_ok=True)

    def compiled(seed):
        model = build(seed)
        model.compile(optimizer=OPTIMIZERS[optimizer](), loss=CE)
        if svgd:
            svgd_keras.enable(model, scale=S)
        return model

    straight = compiled(1)
    straight.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    first = compiled(1)
    callbacks = []
    if saver == "checkpoint_weights":
        callbacks = [keras.callbacks.ModelCheckpoint(str(tmp / "ck.weights.h5"),
                                                     save_weights_only=True)]
    elif saver == "checkpoint_full":
        callbacks = [keras.callbacks.ModelCheckpoint(str(tmp / "ck.keras"))]
    first.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0, callbacks=callbacks)
    if saver == "save_weights":
        first.save_weights(str(tmp / "m.weights.h5"))
    elif saver == "tf_checkpoint":
        path = tf.train.Checkpoint(model=first, optimizer=first.optimizer).write(
            str(tmp / "tf" / "ckpt"))
    elif saver == "model_save":
        first.save(str(tmp / "m.keras"))
    if saver in ("checkpoint_full", "model_save"):
        resumed = keras.models.load_model(str(tmp / ("ck.keras" if saver == "checkpoint_full"
                                                      else "m.keras")))
        if svgd:
            svgd_keras.enable(resumed, scale=S)
    else:
        resumed = compiled(99)  # other initial values: only the restore makes it match
        resumed.optimizer.build(resumed.trainable_variables)
        if saver == "tf_checkpoint":
            tf.train.Checkpoint(model=resumed, optimizer=resumed.optimizer).read(
                path).expect_partial()
        else:
            resumed.load_weights(str(tmp / ("m.weights.h5" if saver == "save_weights"
                                            else "ck.weights.h5")))
    resumed.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    got, want = _all_weights(resumed), _all_weights(straight)
    for v in got.values():
        assert np.all(np.isfinite(v))
    if svgd:
        state, wanted = resumed.svgd_accumulators, straight.svgd_accumulators
        assert sorted(state.accumulators) == sorted(wanted.accumulators)
        got.update({f"r/{k}": v.numpy() for k, v in state.accumulators.items()})
        want.update({f"r/{k}": v.numpy() for k, v in wanted.accumulators.items()})
    return max(rel_error(got[k], want[k]) for k in want)


SAVERS = ["save_weights", "checkpoint_weights", "checkpoint_full", "tf_checkpoint",
          "model_save"]


FAST = {("save_weights", "momentum")}  # the rest run with -m slow


@pytest.mark.parametrize("saver,optimizer", [
    pytest.param(s, o, marks=() if (s, o) in FAST else pytest.mark.slow)
    for s in SAVERS for o in ("sgd", "momentum", "adam")])
def test_resume_is_as_close_as_plain_keras_resume(saver, optimizer, tmp_path):
    """LayerNorm → Dense → Dense: the resumed SVGD run (weights and accumulators) is as close
    to the uninterrupted one as plain Keras's resume on the same path (exact where Keras is
    exact); never a crash, a non-finite value or a slot loaded into an accumulator."""
    plain = _run_resume("ln", optimizer, saver, tmp_path / "plain", svgd=False)
    svgd = _run_resume("ln", optimizer, saver, tmp_path / "svgd", svgd=True)
    assert svgd <= max(plain, 1e-6) * 1.01 + 1e-7, (svgd, plain)


@pytest.mark.slow
@pytest.mark.parametrize("saver", ["save_weights", "model_save"])
def test_resume_with_batch_norm(saver, tmp_path):
    plain = _run_resume("bn", "momentum", saver, tmp_path / "plain", svgd=False)
    svgd = _run_resume("bn", "momentum", saver, tmp_path / "svgd", svgd=True)
    assert svgd <= max(plain, 1e-6) * 1.01 + 1e-7, (svgd, plain)


def test_weights_saved_before_enable_load_with_zero_accumulators(tmp_path):
    x, y = _resume_data("ln")
    model = _ln_model(1)
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss=CE)
    model.fit(x, y, batch_size=16, verbose=0)
    model.save_weights(str(tmp_path / "plain.weights.h5"))
    resumed = _ln_model(2)
    resumed.compile(optimizer=keras.optimizers.SGD(0.05), loss=CE)
    svgd = svgd_keras.enable(resumed, scale=S)
    resumed.optimizer.build(resumed.trainable_variables)
    resumed.load_weights(str(tmp_path / "plain.weights.h5"))
    assert any("saved before enable" in n for n in svgd.notes)
    assert_close(_all_weights(resumed), _all_weights(model), 0, "weights")
    resumed.fit(x[:16], y[:16], batch_size=16, verbose=0)
    assert len(svgd.accumulators) == 2


@pytest.mark.slow
def test_model_save_resumes_in_a_fresh_process(tmp_path):
    """model.save → a new process: load_model → enable → fit equals the uninterrupted run."""
    x, y = _resume_data("ln")
    straight = _ln_model(1)
    straight.compile(optimizer=keras.optimizers.Adam(0.01), loss=CE)
    svgd_keras.enable(straight, scale=S)
    straight.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    first = _ln_model(1)
    first.compile(optimizer=keras.optimizers.Adam(0.01), loss=CE)
    svgd_keras.enable(first, scale=S)
    first.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    first.save(str(tmp_path / "m.keras"))
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    code = ("import sys, numpy as np, keras, svgd_rewrite.keras as s\n"
            "m = keras.models.load_model(sys.argv[1]); s.enable(m, scale=0.01)\n"
            "m.fit(np.load(sys.argv[2]), np.load(sys.argv[3]), batch_size=16, shuffle=False,"
            " verbose=0)\n"
            "np.savez(sys.argv[4], *[w.numpy() for w in m.weights],"
            " *[v.numpy() for _, v in sorted(m.svgd_accumulators.accumulators.items())])\n")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "m.keras"),
                           str(tmp_path / "x.npy"), str(tmp_path / "y.npy"),
                           str(tmp_path / "out.npz")], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": ROOT})
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = np.load(tmp_path / "out.npz")
    want = [w.numpy() for w in straight.weights] + [
        v.numpy() for _, v in sorted(straight.svgd_accumulators.accumulators.items())]
    assert len(got.files) == len(want)
    for i, w in enumerate(want):
        assert rel_error(got[f"arr_{i}"], w) <= 1e-6

