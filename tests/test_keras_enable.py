"""``enable`` on an enabled model replaces the options and says so; a built model with nothing
to transform is refused at ``enable``, an unbuilt one runs Keras's own step; recompiling
empties the step cache."""
import keras
import numpy as np
import pytest

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
