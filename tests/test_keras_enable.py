"""``enable`` on an enabled model replaces the options and says so; a model with nothing to
transform is refused at ``enable``, not at ``fit``."""
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
