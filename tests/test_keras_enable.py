"""``enable`` on an enabled model replaces the options and says so; a built model with nothing
to transform is refused at ``enable``, an unbuilt one runs Keras's own step; recompiling
empties the step cache."""
import keras
import numpy as np
import pytest
import tensorflow as tf

import svgd_rewrite
import svgd_rewrite.keras as sk


def _model(layers):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), *layers], name="enable_test")
    model.compile(keras.optimizers.SGD(0.05), "mse")
    return model


def test_enable_twice_replaces_the_options_and_says_so():
    model = _model([keras.layers.Dense(2, name="enable_twice_dense")])
    sk.enable(model, scale=0.1)
    state = sk.enable(model, scale=0.01, granularity="channel")
    assert state.options.scale == 0.01 and state.options.granularity == "channel"
    model.train_on_batch(np.ones((4, 4), np.float32), np.zeros((4, 2), np.float32))
    note = next(w for w in state.report.warnings if "options were replaced" in w)
    assert "scale 0.1 → 0.01" in note and "granularity 'full' → 'channel'" in note
    assert note in state.notes


def test_enable_refuses_a_model_without_kernels():
    model = _model([keras.layers.LayerNormalization(name="norm_only")])
    with pytest.raises(svgd_rewrite.NoSitesError) as exc:
        sk.enable(model)
    assert "no trainable kernel" in str(exc.value) and "\n" not in str(exc.value)


def test_recompile_decision_holds_no_reference_to_the_old_compile():
    """The step cache is emptied when ``compile()`` creates new objects; it decides by weak
    reference, so an old optimizer is collected and a new one at its address is not mistaken
    for it."""
    import gc
    import weakref

    model = _model([keras.layers.Dense(2, name="recompile_dense")])
    svgd = sk.enable(model, scale=0.1)
    x, y = np.ones((4, 4), np.float32), np.zeros((4, 2), np.float32)
    model.train_on_batch(x, y)
    old = weakref.ref(model.optimizer)
    assert len(svgd.steps) == 1
    model.compile(keras.optimizers.SGD(0.05), "mse")
    gc.collect()
    assert old() is None  # nothing of svgd_rewrite keeps the old optimizer alive
    sk.enable(model, scale=0.1)
    svgd = sk.enabled(model)
    model.train_on_batch(x, y)
    model.compile(keras.optimizers.SGD(0.05), "mse")  # a recompile while enabled
    model.train_on_batch(x, y)
    assert len(svgd.steps) == 1 and svgd.report is not None


def test_a_step_with_nothing_to_rewrite_runs_keras_own_step():
    """A model that is not built at ``enable`` and turns out to train nothing (a counter, as
    in Keras's own callback tests) is not refused at ``fit``: Keras's own step runs, with a
    warning."""

    class Counter(keras.Model):
        def __init__(self):
            super().__init__()
            self.count = self.add_variable(shape=(), initializer="zeros", trainable=False)

        def call(self, x):
            self.count.assign(self.count + 1)
            return x

    model = Counter()
    model.compile(keras.optimizers.SGD(0.05), "mse")
    sk.enable(model, transform="identity")
    with pytest.warns(UserWarning, match="nothing to rewrite"):
        model.fit(np.ones((8, 1), np.float32), np.zeros((8, 1), np.float32), batch_size=2,
                  verbose=0)
    assert int(model.count.numpy()) == 4


def test_a_scale_schedule_trains_step_k_with_s_of_k_and_resumes(tmp_path):
    """``enable(model, scale=ExponentialDecay(0.2, 1, 0.5))``: step k (the optimizer's
    ``iterations``) uses s(k), with one traced step, oracle-equal after 4 batches; a model
    resumed from ``save_weights`` after 2 batches continues the schedule."""
    from helpers import rel_error
    from keras_oracle import KerasOracle, conv_dense_model, model_weights

    schedule = keras.optimizers.schedules.ExponentialDecay(0.2, 1, 0.5)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 8, 8, 1)).astype("float32")
    y = rng.integers(0, 3, 16).astype("int32")
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def compiled():
        model = conv_dense_model(0)
        model.compile(optimizer=keras.optimizers.SGD(0.05), loss=loss)
        return model

    oracle = KerasOracle(conv_dense_model(0), keras.optimizers.SGD(0.05), scale=0.2)
    for k in range(4):
        oracle.s = float(schedule(k))
        oracle.step(x[4 * k:4 * k + 4], y[4 * k:4 * k + 4])
    want = oracle.weights()

    model = compiled()
    svgd = sk.enable(model, scale=schedule)
    model.fit(x, y, batch_size=4, shuffle=False, verbose=0)
    got = model_weights(model)
    assert max(rel_error(got[k], want[k]) for k in want) <= 1e-5
    assert len(svgd.steps) == 1
    assert float(svgd.state.hyperparameter_variables["scale"].numpy()) == pytest.approx(0.025)

    first = compiled()
    sk.enable(first, scale=schedule)
    first.fit(x[:8], y[:8], batch_size=4, shuffle=False, verbose=0)
    first.save_weights(str(tmp_path / "half.weights.h5"))
    resumed = compiled()
    sk.enable(resumed, scale=schedule)
    resumed.optimizer.build(resumed.trainable_variables)
    resumed.load_weights(str(tmp_path / "half.weights.h5"))
    resumed.fit(x[8:], y[8:], batch_size=4, shuffle=False, verbose=0)
    got = model_weights(resumed)
    assert max(rel_error(got[k], want[k]) for k in want) <= 1e-5


@pytest.mark.parametrize("per_call", [1, 2], ids=["one-step-per-call", "steps_per_execution=2"])
def test_diagnostics_ratio_every_logs_the_ratio_more_rarely(tmp_path, per_call):
    """``Diagnostics(every=1, ratio_every=2, histogram_every=3)``: r's figures and s at
    every step, the ratio (the figure that costs graph work) at the even steps only, the
    histograms at every third; a second fit with the same callback goes on from step 4."""
    from keras_oracle import conv_dense_model
    from tensorboard.backend.event_processing import event_accumulator

    rng = np.random.default_rng(1)
    x = rng.normal(size=(16, 8, 8, 1)).astype("float32")
    y = rng.integers(0, 3, 16).astype("int32")
    model = conv_dense_model(0)
    model.compile(optimizer=keras.optimizers.SGD(0.05), steps_per_execution=per_call,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    svgd = sk.enable(model, scale=0.02)
    callback = sk.Diagnostics(str(tmp_path / "logs"), every=1, ratio_every=2,
                              histogram_every=3)
    model.fit(x, y, batch_size=4, shuffle=False, verbose=0, callbacks=[callback])
    model.fit(x, y, batch_size=4, shuffle=False, verbose=0, callbacks=[callback])  # a second fit
    events = event_accumulator.EventAccumulator(str(tmp_path / "logs"),
                                                size_guidance={"scalars": 0, "histograms": 0})
    events.Reload()
    for kernel in (s.variable for s in svgd.report.sites):
        assert [e.step for e in events.Scalars(f"{kernel}/r_max")] == list(range(8))
        assert [e.step for e in events.Histograms(f"{kernel}/r")] == [0, 3, 6]
        assert [e.step for e in events.Scalars(f"{kernel}/ratio")] == [0, 2, 4, 6]
    assert [e.value for e in events.Scalars("svgd/scale")] == pytest.approx([0.02] * 8)
    with pytest.raises(sk.SVGDRewriteError, match="ratio_every must be a positive"):
        sk.Diagnostics("logs", ratio_every=0)
    with pytest.raises(sk.SVGDRewriteError, match="histogram_every must be a positive"):
        sk.Diagnostics("logs", histogram_every=2.5)


def test_diagnostics_r_is_r_entering_each_step(tmp_path):
    """r's figures at step k are those of the accumulator after step k−1 (zeros at step 0),
    over three fits with the same callback; the histograms only every tenth step (the
    default)."""
    from keras_oracle import conv_dense_model
    from tensorboard.backend.event_processing import event_accumulator

    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 8, 8, 1)).astype("float32")
    y = rng.integers(0, 3, 4).astype("int32")
    model = conv_dense_model(0)
    model.compile(optimizer=keras.optimizers.SGD(0.05),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    svgd = sk.enable(model, scale=0.02)
    callback = sk.Diagnostics(str(tmp_path / "logs"), every=1)
    after = []  # per step, each kernel's r after it
    for _ in range(3):
        model.fit(x, y, batch_size=4, verbose=0, callbacks=[callback])
        (step,) = svgd.steps.values()
        after.append({s.variable: step.accumulator_of(s).numpy() for s in step.report.sites})
    events = event_accumulator.EventAccumulator(str(tmp_path / "logs"),
                                                size_guidance={"scalars": 0, "histograms": 0})
    events.Reload()
    for kernel, r in after[0].items():
        # histograms every 10 × every steps by default
        assert [e.step for e in events.Histograms(f"{kernel}/r")] == [0]
        entering = [np.zeros_like(r)] + [a[kernel] for a in after[:2]]
        for figure, reduce in (("r_mean", np.mean), ("r_min", np.min), ("r_max", np.max)):
            logged = [e.value for e in events.Scalars(f"{kernel}/{figure}")]
            np.testing.assert_allclose(logged, [reduce(e) for e in entering], rtol=1e-6)
        assert after[1][kernel].max() > after[0][kernel].max() > 0


@pytest.mark.parametrize("per_call,jit_compile", [(1, False), (2, False), (1, True)],
                         ids=["one-step-per-call", "steps_per_execution=2", "jit_compile"])
def test_diagnostics_callback_writes_each_kernels_figures(tmp_path, per_call, jit_compile):
    """``Diagnostics``: TensorBoard event files holding, for every transformed kernel, r's
    mean/min/max and histogram and the norm ratio on the logged steps' batches, and s(k),
    in the files by the end of each epoch; nothing more once fit has ended. A histogram
    step that is not an ``every``-th step is logged too."""
    from keras_oracle import conv_dense_model
    from tensorboard.backend.event_processing import event_accumulator

    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 8, 8, 1)).astype("float32")
    y = rng.integers(0, 3, 16).astype("int32")
    model = conv_dense_model(0)
    model.compile(optimizer=keras.optimizers.SGD(0.05), steps_per_execution=per_call,
                  jit_compile=jit_compile,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    svgd = sk.enable(model, scale=keras.optimizers.schedules.ExponentialDecay(0.02, 1, 0.5))
    callback = sk.Diagnostics(str(tmp_path / "logs"), every=2, histogram_every=3)
    at_epoch_end = []  # the tags in the files when the epoch ends (the writer holds events)

    def read_at_epoch_end(epoch, logs):
        files = event_accumulator.EventAccumulator(str(tmp_path / "logs"))
        files.Reload()
        at_epoch_end.append(set(files.Tags()["scalars"]))

    model.fit(x, y, batch_size=4, shuffle=False, verbose=0, callbacks=[
        callback, keras.callbacks.LambdaCallback(on_epoch_end=read_at_epoch_end)])
    model.train_on_batch(x[:4], y[:4])  # step 4, after fit: not logged
    model.fit(x[:4], y[:4], batch_size=4, verbose=0)  # step 5, without the callback
    events = event_accumulator.EventAccumulator(str(tmp_path / "logs"),
                                                size_guidance={"scalars": 0, "histograms": 0})
    events.Reload()
    scalars, histograms = set(events.Tags()["scalars"]), set(events.Tags()["histograms"])
    kernels = [s.variable for s in svgd.report.sites]
    assert len(kernels) == 2
    for kernel in kernels:
        for figure in ("r_mean", "r_min", "r_max", "ratio"):
            assert f"{kernel}/{figure}" in scalars, (kernel, figure, scalars)
        assert [e.step for e in events.Histograms(f"{kernel}/r")] == [0, 3]
        assert [e.step for e in events.Scalars(f"{kernel}/ratio")] == [0, 2]  # every 2 steps
        assert [e.step for e in events.Scalars(f"{kernel}/r_max")] == [0, 2, 3]
        ratios = [e.value for e in events.Scalars(f"{kernel}/ratio")]
        assert all(np.isfinite(ratios)) and all(r > 0 for r in ratios)
        r_mean = [e.value for e in events.Scalars(f"{kernel}/r_mean")]
        assert r_mean[0] == 0.0 and r_mean[1] > 0  # r entering step 0, then step 2
    assert f"{kernels[0]}/ratio" in at_epoch_end[0] and "svgd/scale" in at_epoch_end[0]
    scales = [e.value for e in events.Scalars("svgd/scale")]
    assert scales == pytest.approx([0.02, 0.005, 0.0025])  # s(0), s(2), s(3)
    assert int(model.optimizer.iterations.numpy()) == 6
