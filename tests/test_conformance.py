"""Every layer configuration users build (``tests/conformance.py``): the identity transform
equals plain Keras bit for bit, SVGD equals the layer-level oracle after three batches of
``fit``, and a kernel left on plain gradients is named with its reason and a warning."""
import os

import numpy as np
import pytest

import svgd_rewrite.keras as sk
from conformance import (SCALE, Case, build_model, cases, fit, oracle_weights, relative,
                         table_row, weights)

TABLE_PAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs",
                          "algorithm.md")
CASES = [pytest.param(c, id=c.id, marks=[pytest.mark.slow] if c.slow else [])
         for c in cases()]
# float16 compute: the model and the float32 oracle differ by float16 rounding
BOUND = {"float32": 1e-5, "mixed_float16": 2e-2}


@pytest.mark.parametrize("case", CASES)
def test_layer_configuration(case: Case):
    plain = build_model(case)
    fit(plain, case)
    identity = build_model(case)
    sk.enable(identity, transform="identity")
    fit(identity, case)
    want, got = weights(plain), weights(identity)
    assert all(np.array_equal(want[k], got[k]) for k in want), "identity differs from Keras"

    model = build_model(case)
    state = sk.enable(model, scale=SCALE)
    fit(model, case)
    report = state.report
    skipped = {k.variable.split("/")[-1]: k.reason for k in report.skipped if k.op != "BiasAdd"}
    for name in case.plain:
        assert name in skipped, (name, skipped)
        assert any(name in w for w in report.warnings), report.warnings
    kernels = [w.path for w in model.trainable_weights if len(w.shape) >= 2]
    transformed = {s.variable for s in report.sites}
    assert transformed == {k for k in kernels if k.split("/")[-1] not in case.plain}
    error = relative(weights(model), oracle_weights(case))
    assert error <= BOUND[case.precision], error
    with open(TABLE_PAGE, encoding="utf-8") as f:
        assert table_row(case, report) in f.read(), table_row(case, report)


def test_cases_cover_every_option_once():
    ids = [c.id for c in cases()]
    assert len(ids) == len(set(ids)) and len(ids) >= 40


REWRITE_CASES = {c.id: c for c in cases()}


@pytest.mark.parametrize("case_id", ["Conv2D-groups2", "Conv1D-causal_dilation_rate2",
                                     "Dense-lora", "Dense-default-float32-loss_scale_factor",
                                     "Conv2D-default-float32-loss_scale_optimizer"])
def test_custom_step_rewrite(case_id):
    """The same configurations through ``svgd_rewrite.rewrite`` of a hand-written step
    (``optimizer.scale_loss`` / ``apply``, as a custom training loop writes them)."""
    import tensorflow as tf

    import svgd_rewrite
    from conformance import BATCH, STEPS, data

    case = REWRITE_CASES[case_id]
    model = build_model(case)
    optimizer = model.optimizer
    optimizer.build(model.trainable_variables)

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
                labels=y, logits=tf.cast(logits, tf.float32)))
            scaled = optimizer.scale_loss(loss)
        grads = tape.gradient(scaled, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables)
        return loss

    x, y = data(case)
    spec = (tf.TensorSpec((BATCH,) + case.input_shape), tf.TensorSpec((BATCH,), tf.int64))
    rewritten = svgd_rewrite.rewrite(step.get_concrete_function(*spec), scale=SCALE)
    skipped = {k.variable.split("/")[-1] for k in rewritten.report.skipped}
    assert set(case.plain) <= skipped
    for k in range(STEPS):
        rewritten(x[k * BATCH:(k + 1) * BATCH], y[k * BATCH:(k + 1) * BATCH])
    error = relative(weights(model), oracle_weights(case))
    assert error <= BOUND[case.precision], error
