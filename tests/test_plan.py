"""The plan's warnings: the scale hint fires for every site whose σ' has more than 2 axes,
Dense layers on sequences included (flattened to a 2-D MatMul and reshaped back)."""
from __future__ import annotations

import keras

import svgd_rewrite
from fixtures import keras_models

HINT = "the paper used s = 0.01"


def _warnings(layers, input_shape, scale: float) -> list[str]:
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input(input_shape), *layers])
    step = svgd_rewrite.rewrite(keras_models.train_step(model, l1=0), scale=scale)
    return step.report.warnings


def _hint(warnings: list[str]) -> str | None:
    return next((w for w in warnings if HINT in w), None)


def test_scale_hint_fires_for_dense_on_a_sequence():
    L = keras.layers
    hint = _hint(_warnings([L.Dense(3, name="on_seq"), L.Flatten(), L.Dense(2, name="flat")],
                           (5, 4), scale=0.1))
    assert hint is not None and "on_seq/kernel" in hint
    assert "flat/kernel" not in hint  # reading a Flatten's output is a plain 2-D Dense


def test_no_scale_hint_for_plain_dense_or_a_small_scale():
    L = keras.layers
    assert _hint(_warnings([L.Dense(3), L.Dense(2)], (4,), scale=0.1)) is None
    assert _hint(_warnings([L.Dense(3), L.Flatten(), L.Dense(2)], (5, 4), 0.01)) is None
