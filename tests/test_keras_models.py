"""Real-world Keras graphs: an application model, a transformer block, mixed precision,
control flow, dynamic shapes, shared layers."""
import keras
import numpy as np
import pytest
import tensorflow as tf

import svgd_rewrite
from fixtures import keras_models


def _kernel_count(model) -> int:
    """Conv / depthwise / dense kernels: the trainable variables of rank ≥ 2."""
    return sum(1 for w in model.trainable_variables if len(w.shape) >= 2)


def _max_weight_diff(a, b) -> float:
    return max(float(tf.reduce_max(tf.abs(tf.cast(u, tf.float32) - tf.cast(v, tf.float32))))
               for u, v in zip(a.weights, b.weights))


@pytest.fixture(scope="module")
def batch_images():
    rng = np.random.default_rng(0)
    return (tf.constant(rng.normal(size=(8, 32, 32, 3)).astype(np.float32)),
            tf.constant(np.arange(8) % 5, tf.int32))


@pytest.mark.slow
def test_mobilenet_v2_every_kernel_is_a_site_and_loss_falls(batch_images):
    model = keras_models.mobilenet_v2()
    step = svgd_rewrite.rewrite(keras_models.train_step(model, keras.optimizers.SGD(0.05), l1=0))
    sites = step.report.sites
    assert len(sites) == _kernel_count(model) == 53
    assert {s.op for s in sites} == {"Conv2D", "DepthwiseConv2dNative", "MatMul"}
    assert len({s.variable for s in sites}) == len(sites)
    losses = [float(step(*batch_images)) for _ in range(20)]
    assert all(np.isfinite(losses)) and losses[-1] < 0.5 * losses[0]


@pytest.mark.slow
def test_mobilenet_v2_identity_transform_matches_original(batch_images):
    original = keras_models.mobilenet_v2(seed=3)
    copy = keras_models.mobilenet_v2(seed=3)
    step_a = keras_models.train_step(original, keras.optimizers.SGD(0.05), l1=0)
    step_b = svgd_rewrite.rewrite(keras_models.train_step(copy, keras.optimizers.SGD(0.05), l1=0),
                                  transform="identity")
    for _ in range(3):
        a, b = float(step_a(*batch_images)), float(step_b(*batch_images))
        assert abs(a - b) <= 1e-6 * abs(a)
    assert _max_weight_diff(original, copy) <= 1e-6


def test_transformer_block_kernels_transformed_embedding_and_norms_identity():
    model = keras_models.transformer_block()
    report = svgd_rewrite.analyze_step(keras_models.train_step(model, l1=0, x_dtype=tf.int32))
    kernels = {w.path for w in model.trainable_variables if w.path.endswith("/kernel")}
    assert {s.variable for s in report.sites} == kernels and len(report.sites) == 7
    assert {s.op for s in report.sites} == {"BatchMatMulV2", "MatMul"}
    by_var = {k.variable: k for k in report.skipped}
    assert "gather" in by_var["embedding/embeddings"].reason
    assert by_var["layer_normalization/gamma"].op == "Mul"
    assert "norm's scale" in by_var["layer_normalization/gamma"].reason


def test_while_body_site_is_rewritten():
    w = tf.Variable(tf.random.normal([4, 4], seed=1) * 0.3)
    v = tf.Variable(tf.random.normal([4, 2], seed=2))

    @tf.function(input_signature=[tf.TensorSpec([None, 4]), tf.TensorSpec([None], tf.int32)])
    def step(x, y):
        with tf.GradientTape() as tape:
            h = tf.while_loop(lambda i, h: i < 3, lambda i, h: (i + 1, tf.tanh(h @ w)), (0, x))[1]
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, h @ v))
        gw, gv = tape.gradient(loss, [w, v])
        w.assign_sub(0.1 * gw)
        v.assign_sub(0.1 * gv)
        return loss

    report = svgd_rewrite.analyze_step(step)
    assert [s.op for s in report.sites] == ["MatMul", "MatMul"] and not report.skipped
    loop_site = report.sites[0]
    assert [a.scaling for a in loop_site.applications] == ["post"]
    assert loop_site.applications[0].loop and loop_site.accumulator_shape == [4]


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_rewrite_trains_and_identity_matches(policy):
    keras.mixed_precision.set_global_policy(policy)
    try:
        def build():
            keras.utils.set_random_seed(0)
            model = keras.Sequential([keras.Input((8, 8, 3)),
                                      keras.layers.Conv2D(4, 3, activation="relu"),
                                      keras.layers.Flatten(), keras.layers.Dense(3)])
            opt = keras.optimizers.SGD(0.05)
            if policy == "mixed_float16":
                opt = keras.optimizers.LossScaleOptimizer(opt)
            return model, keras_models.train_step(model, opt, l1=0)

        x = tf.random.normal([8, 8, 8, 3], seed=4)
        y = tf.constant(np.arange(8) % 3, tf.int32)
        _, step = build()
        svgd = svgd_rewrite.rewrite(step)
        assert [s.op for s in svgd.report.sites] == ["Conv2D", "MatMul"]
        assert all(a.dtype == tf.float32 for a in svgd.accumulators)
        if policy == "mixed_float16":
            assert any("loss scale" in w for w in svgd.report.warnings)
        # the dynamic loss scale may skip a few first steps while it adapts
        losses = [float(svgd(x, y)) for _ in range(15)]
        assert all(np.isfinite(losses)) and losses[-1] < 0.5 * losses[0]
        original, step_a = build()
        copy, step_b = build()
        identity = svgd_rewrite.rewrite(step_b, transform="identity")
        for _ in range(3):
            assert float(step_a(x, y)) == float(identity(x, y))
        assert _max_weight_diff(original, copy) == 0.0
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_unknown_spatial_axes_fall_back_to_channel():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((None, None, 3)), keras.layers.Conv2D(4, 3),
                              keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2)])
    step = keras_models.train_step(model, l1=0)
    report = svgd_rewrite.analyze_step(step, granularity="full")
    conv, dense = report.sites
    assert conv.granularity == "channel" and conv.accumulator_shape == [4]
    assert "full→channel" in conv.note and any("full→channel" in w for w in report.warnings)
    assert dense.granularity == "full" and dense.accumulator_shape == [2]
    svgd = svgd_rewrite.rewrite(step)
    for size in (9, 12):  # the rewritten step keeps the dynamic shapes
        assert np.isfinite(float(svgd(tf.random.normal([4, size, size, 3]), tf.constant([0, 1, 0, 1]))))


def test_nchw_conv2d_channel_axis_is_1():
    """NCHW Conv2D (analysis only: TF's CPU kernels run Conv2D in NHWC only)."""
    k = tf.Variable(tf.random.normal([3, 3, 2, 5]))

    @tf.function(input_signature=[tf.TensorSpec([None, 2, 6, 6])])
    def step(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.nn.conv2d(x, k, 1, "VALID", data_format="NCHW") ** 2)
        k.assign_sub(0.1 * tape.gradient(loss, k))
        return loss

    assert svgd_rewrite.analyze_step(step, granularity="channel").sites[0].accumulator_shape == [5]
    assert svgd_rewrite.analyze_step(step).sites[0].accumulator_shape == [5, 4, 4]


def test_shared_layer_called_twice_gives_one_site_with_two_applications():
    keras.utils.set_random_seed(0)
    shared = keras.layers.Dense(4, activation="tanh")
    a, b = keras.Input((6,)), keras.Input((6,))
    out = keras.layers.Dense(2)(keras.layers.Concatenate()([shared(a), shared(b)]))
    model = keras.Model([a, b], out)
    opt = keras.optimizers.SGD(0.1)

    @tf.function(input_signature=[tf.TensorSpec([None, 6]), tf.TensorSpec([None, 6]),
                                  tf.TensorSpec([None], tf.int32)])
    def step(xa, xb, y):
        with tf.GradientTape() as tape:
            logits = model([xa, xb], training=True)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))
        opt.apply_gradients(zip(tape.gradient(loss, model.trainable_variables),
                                model.trainable_variables))
        return loss

    svgd = svgd_rewrite.rewrite(step)
    sites = {s.variable.split("/")[-2]: s for s in svgd.report.sites}
    assert len(sites) == 2 and len(svgd.accumulators) == 2
    assert len(sites[shared.name].applications) == 2
    x = tf.random.normal([5, 6])
    assert np.isfinite(float(svgd(x, x[:, ::-1], tf.constant([0, 1, 0, 1, 0]))))


@pytest.mark.slow
def test_resnet50_mixed_float16_every_kernel_is_a_site_and_loss_falls():
    """keras.applications.ResNet50 (weights=None, 32×32, batch 4) under mixed_float16 with
    LossScaleOptimizer: the sibling convolutions that read one input (each stage's shortcut and
    first conv) are told apart by their own gradient, so every kernel is a site."""
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        keras.utils.set_random_seed(0)
        model = keras.applications.ResNet50(weights=None, input_shape=(32, 32, 3), classes=10)
        # lr 0.01: at 0.05 the network stalls (dead units) after a few steps on some CPUs
        # (AVX2, oneDNN on or off) while it trains on others; 0.01 trains on every one
        opt = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.01, momentum=0.9))
        step = svgd_rewrite.rewrite(keras_models.train_step(model, opt, l1=0, batch=4),
                                    scale=0.01)
        assert len(step.report.sites) == _kernel_count(model) == 54
        assert not any("not transformed" in w for w in step.report.warnings)
        rng = np.random.default_rng(1)
        x = tf.constant(rng.normal(size=(4, 32, 32, 3)).astype(np.float32))
        y = tf.constant([0, 1, 2, 3], tf.int32)
        losses = [float(step(x, y)) for _ in range(30)]
    finally:
        keras.mixed_precision.set_global_policy("float32")
    # The dynamic loss scale starts at 2**15: the normalized virtual gradients (about s·scale
    # per element, summed over batch and positions by P) overflow float16 until it has halved
    # enough, so LossScaleOptimizer skips those steps (the repeated losses), then training moves.
    assert all(np.isfinite(losses)) and losses[0] > 2.2
    assert np.mean(losses[-5:]) < 0.9 * losses[0], losses
