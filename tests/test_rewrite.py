"""The surgery: deterministic output, a marker, rerouting of P only, the report table."""
import json

import numpy as np
import tensorflow as tf

import svgd_rewrite
from fixtures.models import random_batch
from helpers import assert_close, make_module, module_values
from oracle import Oracle
from svgd_rewrite.load import MARKER_NODE


def test_same_step_gives_identical_graph_def_bytes():
    module = make_module("small_cnn")
    a = svgd_rewrite.rewrite(module.train).graph_def.SerializeToString(deterministic=True)
    b = svgd_rewrite.rewrite(module.train).graph_def.SerializeToString(deterministic=True)
    assert a == b


def test_graph_def_has_marker_and_rerouted_p():
    """Pre-scaled (post_scale=False): P reads ĝ, every other consumer of g keeps g."""
    step = svgd_rewrite.rewrite(make_module("mlp_l1").train, scale=0.5, post_scale=False)
    nodes = {n.name: n for n in step.graph_def.node}
    marker = json.loads(nodes[MARKER_NODE].attr["value"].tensor.string_val[0])
    assert marker["options"]["scale"] == 0.5 and marker["sites"] == 3
    for site in step.report.sites:
        assert [a.scaling for a in site.applications] == ["pre"]
        p = nodes[site.gradient_op]
        assert p.input[site.gradient_input] == f"svgd_rewrite/site_{site.index}/g_hat_0"
        g = site.upstream_gradient.removesuffix(":0")
        readers = [n for n in step.graph_def.node if g in n.input]
        assert readers, "g lost all its consumers"


def test_post_scaled_p_keeps_g_and_its_output_is_scaled():
    """Post-scaled (the default for MatMul sites): P still reads g, only the inserted Mul reads
    P's output, every former reader of P's output reads the scaled one, and no inserted node
    writes a g-sized tensor (each inserted node's output is r-, parameter- or scalar-sized)."""
    step = svgd_rewrite.rewrite(make_module("mlp_l1").train)
    nodes = {n.name: n for n in step.graph_def.node}
    original = {n.name: n for n in step.original_graph_def.node}
    for site in step.report.sites:
        assert [a.scaling for a in site.applications] == ["post"]
        p = nodes[site.gradient_op]
        assert p.input[site.gradient_input] == original[site.gradient_op].input[
            site.gradient_input]
        scaled = f"svgd_rewrite/site_{site.index}/scaled_0"
        readers = [n.name for n in step.graph_def.node if site.gradient_op in n.input]
        assert readers == [scaled]
        before = [n.name for n in step.original_graph_def.node
                  if site.gradient_op in n.input]
        assert before and all(scaled in nodes[name].input for name in before)


def test_post_scaled_equals_pre_scaled_and_the_oracle():
    """P(x, g)·f = P(x, g·f) where f is constant over P's sum: the default (post-scaled MatMul
    sites, channel convolutions) and post_scale=False train alike (≤1e-6 after 3 steps), and
    both like the eager oracle (≤1e-5)."""
    for name, granularity in (("mlp_l1", "full"), ("small_cnn", "channel")):
        post, pre, ref = (make_module(name, seed=0) for _ in range(3))
        post_step = svgd_rewrite.rewrite(post.train, granularity=granularity)
        pre_step = svgd_rewrite.rewrite(pre.train, granularity=granularity, post_scale=False)
        assert {a.scaling for s in post_step.report.sites for a in s.applications} == {"post"}
        assert {a.scaling for s in pre_step.report.sites for a in s.applications} == {"pre"}
        oracle = Oracle(ref.spec, ref.params, ref.state, learning_rate=0.05,
                        granularity=granularity)
        for i in range(3):
            x, y = random_batch(post.spec, 8, seed=i)
            post_step(x, y)
            pre_step(x, y)
            oracle.step(x, y)
        assert_close(module_values(post), module_values(pre), 1e-6, f"{name} post vs pre")
        assert_close(module_values(post), module_values(ref), 1e-5, f"{name} vs oracle")


def test_input_gradients_stay_exact():
    """Backprop to activations uses the true g (Eqn. 10): the input gradient the rewritten step
    returns equals the eager gradient at the same parameters, step after step, while the
    parameters move by the virtual gradients (not by SGD's)."""
    rng = np.random.default_rng(0)
    w1 = tf.Variable(rng.normal(size=(5, 4)).astype(np.float32) * 0.5)
    w2 = tf.Variable(rng.normal(size=(4, 2)).astype(np.float32) * 0.5)

    def loss_of(x, y, a, b):
        return tf.reduce_mean(tf.square(tf.matmul(tf.tanh(tf.matmul(x, a)), b) - y))

    @tf.function(input_signature=[tf.TensorSpec((8, 5)), tf.TensorSpec((8, 2))])
    def step(x, y):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = loss_of(x, y, w1, w2)
        dx, g1, g2 = tape.gradient(loss, [x, w1, w2])
        w1.assign_sub(0.1 * g1)
        w2.assign_sub(0.1 * g2)
        return {"loss": loss, "dx": dx}

    svgd = svgd_rewrite.rewrite(step, scale=0.1)
    for i in range(4):
        x = tf.constant(rng.normal(size=(8, 5)).astype(np.float32))
        y = tf.constant(rng.normal(size=(8, 2)).astype(np.float32))
        a, b = tf.constant(w1.numpy()), tf.constant(w2.numpy())
        with tf.GradientTape(persistent=True) as tape:
            tape.watch([x, a, b])
            loss = loss_of(x, y, a, b)
        want_dx = tape.gradient(loss, x)
        sgd_w1 = a - 0.1 * tape.gradient(loss, a)
        out = svgd(x, y)
        np.testing.assert_allclose(out["dx"].numpy(), want_dx.numpy(), rtol=1e-5, atol=1e-7)
        assert not np.allclose(w1.numpy(), sgd_w1.numpy(), rtol=1e-3), f"step {i}: plain SGD"


def test_report_table_and_dict():
    step = svgd_rewrite.rewrite(make_module("mlp_l1").train)
    text = str(step.report)
    assert "3 site(s) transformed" in text and "Abs" in text and "Adam" in text
    d = step.report.to_dict()
    assert [s["accumulator_size"] for s in d["sites"]] == [8, 5, 3]
    assert json.loads(step.report.to_json())["memory"]["accumulator_floats"] == 16


def test_result_is_a_checkpointable_module(tmp_path):
    module = make_module("mlp_l1")
    step = svgd_rewrite.rewrite(module.train)
    assert isinstance(step, tf.Module)
    assert all(a.dtype == tf.float32 and not a.trainable for a in step.accumulators)
    assert {id(v) for v in step.step_variables} >= {id(v) for v in module.params.values()}
    x, y = random_batch(module.spec, 8)
    step(x, y)
    saved = [a.numpy() for a in step.accumulators]
    path = tf.train.Checkpoint(step=step).write(str(tmp_path / "ckpt"))
    step(x, y)
    tf.train.Checkpoint(step=step).read(path).assert_consumed()
    for a, b in zip(step.accumulators, saved):
        np.testing.assert_array_equal(a.numpy(), b)
