"""Sites inside functional While loops (recurrent layers with unroll=False, tf.while_loop):
the loop's kernels train exactly like the unrolled layer and like a hand-unrolled eager
oracle (tests/rnn_oracle.py), with one accumulator per kernel pooled over every timestep."""
from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import svgd_rewrite
import svgd_rewrite.keras as svgd_keras
from helpers import assert_close, rel_error
from rnn_oracle import KINDS, RNNOracle, build, data

S = 0.1
KERNELS = {"rnn": 3, "lstm": 3, "gru": 3, "bi": 5}


def _weights(model) -> dict[str, np.ndarray]:
    return {str(i): w.numpy() for i, w in enumerate(model.weights)}


@pytest.mark.parametrize("kind", KINDS)
def test_loop_equals_unrolled_and_the_hand_unrolled_oracle(kind):
    """unroll=False (a While loop) vs unroll=True (one application per timestep) vs the
    oracle: ≤1e-5 after each of 3 steps; every kernel is a site (one accumulator each)."""
    x, y = data(kind, n=24)
    looped, unrolled = build(kind, unroll=False), build(kind, unroll=True)
    oracle = RNNOracle(build(kind, unroll=True), kind, scale=S)
    a, b = svgd_keras.enable(looped, scale=S), svgd_keras.enable(unrolled, scale=S)
    for i in range(3):
        sl = slice(8 * i, 8 * i + 8)
        la = looped.train_on_batch(x[sl], y[sl])
        lb = unrolled.train_on_batch(x[sl], y[sl])
        want = oracle.step(x[sl], y[sl])
        assert la == pytest.approx(want, rel=1e-5) and lb == pytest.approx(want, rel=1e-5)
        assert_close(_weights(looped), oracle.weights(), 1e-5, f"{kind} loop, step {i}")
        assert_close(_weights(unrolled), oracle.weights(), 1e-5, f"{kind} unrolled, step {i}")
    for state in (a, b):
        assert len(state.report.sites) == len(state.accumulators) == KERNELS[kind]
        assert not state.report.warnings, state.report.warnings
    loop_sites = [s for s in a.report.sites if any(app.loop for app in s.applications)]
    assert len(loop_sites) == KERNELS[kind] - 1  # every recurrent kernel; the head is outside
    assert all(app.scaling == "post" for s in loop_sites for app in s.applications)
    steps = x.shape[1]
    assert {len(s.applications) for s in b.report.sites} == {1, steps}  # unrolled: T uses


def test_masked_sequences_train_like_the_unrolled_layer_and_the_oracle():
    """Embedding(mask_zero=True) → LSTM on variable-length sequences: masked timesteps carry
    the state over (their g is 0) and count as rows, in the loop as in the unrolled layer."""
    x, y = data("lstm", n=24, masked=True)
    looped, unrolled = build("lstm", False, masked=True), build("lstm", True, masked=True)
    oracle = RNNOracle(build("lstm", True, masked=True), "lstm", scale=S)
    svgd_keras.enable(looped, scale=S)
    svgd_keras.enable(unrolled, scale=S)
    for i in range(3):
        sl = slice(8 * i, 8 * i + 8)
        looped.train_on_batch(x[sl], y[sl])
        unrolled.train_on_batch(x[sl], y[sl])
        oracle.step(x[sl], y[sl])
        assert_close(_weights(looped), oracle.weights(), 1e-5, f"masked loop, step {i}")
        assert_close(_weights(unrolled), oracle.weights(), 1e-5, f"masked unrolled, step {i}")


def test_jit_compiled_recurrent_step():
    x, y = data("lstm", n=24)
    model = build("lstm", unroll=False)
    model.compile(optimizer=keras.optimizers.SGD(0.1), jit_compile=True,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    svgd = svgd_keras.enable(model, scale=S)
    oracle = RNNOracle(build("lstm", unroll=True), "lstm", scale=S)
    for i in range(3):
        sl = slice(8 * i, 8 * i + 8)
        model.train_on_batch(x[sl], y[sl])
        oracle.step(x[sl], y[sl])
    assert_close(_weights(model), oracle.weights(), 1e-5, "jit_compile")
    ops = {n.op for step in svgd.steps.values() for f in step.graph_def.library.function
           for n in f.node_def if n.name.startswith("svgd_rewrite/")}
    assert ops and "EuclideanNorm" not in ops  # the portable form inside the XLA loop


def test_seq2seq_every_kernel_is_a_site_and_the_loss_falls():
    """A hand-built encoder-decoder (an LSTM encoder whose states start an LSTM decoder, a GRU
    on top) trained with keras.enable into Adam: every kernel a site, the loss falls."""
    keras.utils.set_random_seed(0)
    enc_in = keras.Input((6,), dtype="int32")
    dec_in = keras.Input((5,), dtype="int32")
    emb = keras.layers.Embedding(12, 8, name="emb")
    _, h, c = keras.layers.LSTM(16, return_state=True, name="encoder")(emb(enc_in))
    seq = keras.layers.LSTM(16, return_sequences=True, name="decoder")(emb(dec_in),
                                                                       initial_state=[h, c])
    out = keras.layers.Dense(12, name="vocab")(keras.layers.GRU(16, return_sequences=True,
                                                                name="refine")(seq))
    model = keras.Model([enc_in, dec_in], out)
    model.compile(optimizer=keras.optimizers.Adam(0.01),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    svgd = svgd_keras.enable(model, scale=0.1)
    rng = np.random.default_rng(1)
    src = rng.integers(1, 12, size=(64, 6)).astype(np.int32)
    tgt = np.sort(src[:, :5], axis=1)  # learn to sort the first five tokens
    history = model.fit([src, tgt], tgt, batch_size=16, epochs=6, verbose=0)
    kernels = [w for w in model.trainable_weights if w.name in ("kernel", "recurrent_kernel")]
    assert len(svgd.report.sites) == len(kernels) == 7
    assert not [w for w in svgd.report.warnings if "no virtual gradients" in w]
    loss = history.history["loss"]
    assert np.all(np.isfinite(loss)) and loss[-1] < 0.9 * loss[0]


def _while_step():
    w = tf.Variable(tf.random.stateless_normal([4, 4], seed=[1, 1]) * 0.3)
    v = tf.Variable(tf.random.stateless_normal([4, 2], seed=[2, 2]))

    @tf.function(input_signature=[tf.TensorSpec([None, 4]), tf.TensorSpec([None], tf.int32)])
    def step(x, y):
        with tf.GradientTape() as tape:
            h = tf.while_loop(lambda i, h: i < 3, lambda i, h: (i + 1, tf.tanh(h @ w)),
                              (0, x))[1]
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, h @ v))
        gw, gv = tape.gradient(loss, [w, v])
        w.assign_sub(0.1 * gw)
        v.assign_sub(0.1 * gv)
        return loss

    return w, v, step


def test_tf_while_loop_step_matches_a_hand_unrolled_oracle():
    w, v, step = _while_step()
    svgd = svgd_rewrite.rewrite(step)
    w2, v2, _ = _while_step()
    r: dict[str, tf.Tensor] = {}
    for i in range(3):
        x = tf.random.stateless_normal([8, 4], seed=[i, 7])
        y = tf.constant(np.arange(8) % 2, tf.int32)
        with tf.GradientTape() as tape:
            h, applications = x, []
            for _ in range(3):
                z = h @ tf.stop_gradient(w2)
                tape.watch(z)
                applications.append((h, z))
                h = tf.tanh(z)
            zv = h @ tf.stop_gradient(v2)
            tape.watch(zv)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, zv))
        gs = tape.gradient(loss, [z for _, z in applications] + [zv])
        for name, pairs, var in (("w", [(a, g) for (a, _), g in zip(applications, gs)], w2),
                                 ("v", [(h, gs[3])], v2)):
            sums = sum(tf.reduce_sum(g * g, 0) for _, g in pairs)
            r[name] = 0.9 * r.get(name, 0.0) + 0.1 * sums / sum(g.shape[0] for _, g in pairs)
            var.assign_sub(0.1 * sum(tf.matmul(a, g * 0.1 / tf.sqrt(r[name] + 1e-6),
                                               transpose_a=True) for a, g in pairs))
        assert float(svgd(x, y)) == pytest.approx(float(loss), rel=1e-6)
        assert rel_error(w.numpy(), w2.numpy()) <= 1e-5 and rel_error(v.numpy(), v2.numpy()) <= 1e-5
    assert_close({"w": svgd.accumulators[0].numpy(), "v": svgd.accumulators[1].numpy()},
                 {k: t.numpy() for k, t in r.items()}, 1e-5, "accumulators")


def test_a_convolution_inside_a_loop_uses_channel_granularity_with_a_note():
    """h ← tanh(conv2d(h, K)) in a tf.while_loop: f at full granularity would vary over H and
    W, which the filter gradient sums, so the loop site is rewritten at channel granularity
    with a note; it matches a hand-unrolled oracle at channel granularity."""
    def make():
        k = tf.Variable(tf.random.stateless_normal([3, 3, 2, 2], seed=[3, 3]) * 0.3)

        @tf.function(input_signature=[tf.TensorSpec([None, 5, 5, 2])])
        def step(x):
            with tf.GradientTape() as tape:
                h = tf.while_loop(lambda i, h: i < 3,
                                  lambda i, h: (i + 1, tf.tanh(tf.nn.conv2d(h, k, 1, "SAME"))),
                                  (0, x))[1]
                loss = tf.reduce_mean(tf.square(h - 0.5))
            k.assign_sub(0.1 * tape.gradient(loss, k))
            return loss

        return k, step

    k, step = make()
    svgd = svgd_rewrite.rewrite(step, scale=0.01)
    (site,) = svgd.report.sites
    assert site.granularity == "channel" and "full→channel" in site.note
    assert site.accumulator_shape == [2] and site.applications[0].loop
    k2, _ = make()
    r = 0.0
    for i in range(3):
        x = tf.random.stateless_normal([4, 5, 5, 2], seed=[i, 1])
        with tf.GradientTape() as tape:
            h, apps = x, []
            for _ in range(3):
                z = tf.nn.conv2d(h, tf.stop_gradient(k2), 1, "SAME")
                tape.watch(z)
                apps.append((h, z))
                h = tf.tanh(z)
            loss = tf.reduce_mean(tf.square(h - 0.5))
        gs = tape.gradient(loss, [z for _, z in apps])
        sums = sum(tf.reduce_sum(g * g, [0, 1, 2]) for g in gs)
        r = 0.9 * r + 0.1 * sums / sum(int(np.prod(g.shape[:3])) for g in gs)
        f = 0.01 / tf.sqrt(r + 1e-6)
        grad = 0.0
        for (a, _), g in zip(apps, gs):
            with tf.GradientTape() as vjp:
                kk = tf.convert_to_tensor(k2)
                vjp.watch(kk)
                out = tf.nn.conv2d(a, kk, 1, "SAME")
            grad += vjp.gradient(out, kk, output_gradients=g * f)
        k2.assign_sub(0.1 * grad)
        assert float(svgd(x)) == pytest.approx(float(loss), rel=1e-5)
        assert rel_error(k.numpy(), k2.numpy()) <= 1e-5


def test_kernels_a_loop_cuts_into_parts_are_named_in_the_warnings():
    """ConvLSTM2D splits its kernels per gate before the convolutions: the sites must read θ
    whole, so those kernels keep plain gradients — and the report's warnings name them."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3, 6, 6, 2)),
                              keras.layers.ConvLSTM2D(3, 3, padding="same", name="convlstm"),
                              keras.layers.Flatten(), keras.layers.Dense(2, name="head")])
    model.compile(optimizer=keras.optimizers.SGD(0.05),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    svgd = svgd_keras.enable(model, scale=0.01)
    x = np.random.default_rng(0).normal(size=(8, 3, 6, 6, 2)).astype(np.float32)
    history = model.fit(x, np.arange(8) % 2, batch_size=4, epochs=1, verbose=0)
    assert [s.variable.split("/")[-2] for s in svgd.report.sites] == ["head"]
    (warning,) = [w for w in svgd.report.warnings if "get no virtual gradients" in w]
    assert warning.startswith("2 kernel(s)") and "cut into parts (Split)" in warning
    assert "recurrent_kernel" in warning and np.all(np.isfinite(history.history["loss"]))


def test_pooling_per_application_refuses_nothing_and_still_trains():
    """pooling="application" inside a loop: the loop's timesteps are one application (one
    P accumulated by the loop), so the result equals the pooled one."""
    x, y = data("lstm", n=8)
    a, b = build("lstm", unroll=False), build("lstm", unroll=False)
    svgd_keras.enable(a, scale=S)
    svgd_keras.enable(b, scale=S, pooling="application")
    a.train_on_batch(x, y)
    b.train_on_batch(x, y)
    assert_close(_weights(a), _weights(b), 1e-6, "pooling")
