"""The surgery: deterministic output, a marker, rerouting of P only, the report table."""
import json

import numpy as np
import tensorflow as tf

import svgd_rewrite
from fixtures.models import random_batch
from helpers import make_module
from svgd_rewrite.load import MARKER_NODE


def test_same_step_gives_identical_graph_def_bytes():
    module = make_module("small_cnn")
    a = svgd_rewrite.rewrite(module.train).graph_def.SerializeToString(deterministic=True)
    b = svgd_rewrite.rewrite(module.train).graph_def.SerializeToString(deterministic=True)
    assert a == b


def test_graph_def_has_marker_and_rerouted_p():
    step = svgd_rewrite.rewrite(make_module("mlp_l1").train, scale=0.5)
    nodes = {n.name: n for n in step.graph_def.node}
    marker = json.loads(nodes[MARKER_NODE].attr["value"].tensor.string_val[0])
    assert marker["options"]["scale"] == 0.5 and marker["sites"] == 3
    for site in step.report.sites:
        p = nodes[site.gradient_op]
        assert p.input[site.gradient_input] == f"svgd_rewrite/site_{site.index}/g_hat"
        # every other consumer of g keeps g
        g = site.upstream_gradient.removesuffix(":0")
        readers = [n for n in step.graph_def.node if g in n.input]
        assert readers, "g lost all its consumers"


def test_input_gradients_stay_exact():
    """Backprop to activations uses the true g (Eqn. 10): with s tiny, only θ's steps shrink."""
    base = make_module("mlp_l1", seed=2)
    module = make_module("mlp_l1", seed=2)
    step = svgd_rewrite.rewrite(module.train, transform="identity")
    x, y = random_batch(module.spec, 8)
    assert np.isclose(float(step(x, y)["loss"]), float(base.train(x, y)["loss"]))


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
