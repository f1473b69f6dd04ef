"""r is state of θ: one accumulator per trained variable, pooled over every application of θ
in a step, shared between rewrites when asked, saved and restored by name."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

import svgd_rewrite
from helpers import assert_close

rng = np.random.default_rng(0)
W1_INIT = rng.normal(size=(6, 8)).astype(np.float32) * 0.5
W2_INIT = rng.normal(size=(8, 3)).astype(np.float32) * 0.5


def _model():
    return (tf.Variable(W1_INIT, name="w1"), tf.Variable(W2_INIT, name="w2"))


def _loss(w1, w2, x, y):
    logits = tf.matmul(tf.tanh(tf.matmul(x, w1)), w2)
    return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))


SPECS = [tf.TensorSpec((16, 6)), tf.TensorSpec((16,), tf.int32)]


def _whole_step(w1, w2):
    @tf.function(input_signature=SPECS)
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = _loss(w1, w2, x, y)
        g1, g2 = tape.gradient(loss, [w1, w2])
        w1.assign_sub(0.1 * g1)
        w2.assign_sub(0.1 * g2)
        return loss

    return step


def _micro_batch_step(w1, w2):
    """Two micro-batches of 8 accumulated inside one step (each loss halved)."""
    @tf.function(input_signature=SPECS)
    def step(x, y):
        total = [tf.zeros_like(w1), tf.zeros_like(w2)]
        losses = []
        for half in (slice(0, 8), slice(8, 16)):
            with tf.GradientTape() as tape:
                loss = _loss(w1, w2, x[half], y[half]) / 2
            total = [t + g for t, g in zip(total, tape.gradient(loss, [w1, w2]))]
            losses.append(loss)
        w1.assign_sub(0.1 * total[0])
        w2.assign_sub(0.1 * total[1])
        return losses[0] + losses[1]

    return step


def _batches(n=3):
    r = np.random.default_rng(1)
    return [(tf.constant(r.normal(size=(16, 6)).astype(np.float32)),
             tf.constant(r.integers(0, 3, 16).astype(np.int32))) for _ in range(n)]


def test_micro_batches_inside_a_step_train_like_the_whole_batch():
    """One accumulator per kernel fed by both micro-batches' rows: the step equals the same
    step on the whole batch (≤1e-5 after each of 3 steps), accumulators included."""
    whole_vars, micro_vars = _model(), _model()
    whole = svgd_rewrite.rewrite(_whole_step(*whole_vars))
    micro = svgd_rewrite.rewrite(_micro_batch_step(*micro_vars))
    assert len(micro.accumulators) == len(whole.accumulators) == 2
    assert [len(s.applications) for s in micro.report.sites] == [2, 2]
    for i, (x, y) in enumerate(_batches()):
        assert float(micro(x, y)) == pytest.approx(float(whole(x, y)), rel=1e-5)
        assert_close({f"w{k}": v.numpy() for k, v in enumerate(micro_vars)},
                     {f"w{k}": v.numpy() for k, v in enumerate(whole_vars)}, 1e-5, f"step {i}")
        assert_close(micro.state.values(), whole.state.values(), 1e-5, f"r, step {i}")


def test_rewrites_share_one_state_when_asked():
    """Two rewrites of the same step over one state read and update the same accumulators:
    alternating them trains like one rewrite."""
    a_vars, b_vars = _model(), _model()
    first = svgd_rewrite.rewrite(_whole_step(*a_vars))
    second = svgd_rewrite.rewrite(_whole_step(*a_vars), state=first.state)
    assert [id(v) for v in second.accumulators] == [id(v) for v in first.accumulators]
    single = svgd_rewrite.rewrite(_whole_step(*b_vars))
    for i, (x, y) in enumerate(_batches(4)):
        (first if i % 2 else second)(x, y)
        single(x, y)
    assert_close(first.state.values(), single.state.values(), 1e-6, "shared r")
    assert sorted(first.state.accumulators) == ["w1", "w2"]
    with pytest.raises(svgd_rewrite.InvalidOptionError, match="AccumulatorState"):
        svgd_rewrite.rewrite(_whole_step(*a_vars), state={})


def test_a_checkpoint_restores_accumulators_by_name(tmp_path):
    """tf.train.Checkpoint of a rewritten step, restored into a fresh rewrite before its
    first call: the accumulators come back by key, whatever order they are created in."""
    variables = _model()
    step = svgd_rewrite.rewrite(_whole_step(*variables))
    for x, y in _batches(2):
        step(x, y)
    path = tf.train.Checkpoint(step=step).write(str(tmp_path / "ckpt"))
    fresh_vars = _model()
    fresh = svgd_rewrite.rewrite(_whole_step(*fresh_vars))
    tf.train.Checkpoint(step=fresh).read(path).assert_existing_objects_matched()
    assert_close(fresh.state.values(), step.state.values(), 0, "restored r")
    assert all(a.name.startswith("svgd/") for a in fresh.accumulators)
