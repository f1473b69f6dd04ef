"""Identification is structural: renamed and prefixed graphs give the same sites."""
import pytest
import tensorflow as tf
from tensorflow.core.framework import graph_pb2

import svgd_rewrite
from helpers import make_module
from svgd_rewrite.ir import parse_input
from svgd_rewrite.tf_compat import capture


def _renamed_step(module, prefix: str):
    """The module's train step re-imported with every node renamed ``n<i>`` under ``prefix``."""
    cf = module.train.get_concrete_function()
    gd = cf.graph.as_graph_def()
    mapping = {n.name: f"n{i}" for i, n in enumerate(gd.node)}
    renamed = graph_pb2.GraphDef()
    renamed.library.CopyFrom(gd.library)
    renamed.versions.CopyFrom(gd.versions)
    for node in gd.node:
        new = renamed.node.add()
        new.CopyFrom(node)
        new.name = mapping[node.name]
        del new.input[:]
        for inp in node.input:
            src, port, control = parse_input(inp)
            new.input.append(("^" + mapping[src]) if control else mapping[src] + (f":{port}" if port else ""))
        if "_class" in new.attr:
            del new.attr["_class"]
    n_user = len(cf.inputs) - len(cf.graph.captures)
    user = [mapping[t.op.name] + ":0" for t in cf.inputs[:n_user]]
    caps = [(mapping[i.op.name] + ":0", e) for e, i in cf.graph.captures]
    out = mapping[cf.outputs[0].op.name] + ":0"

    @tf.function(input_signature=cf.structured_input_signature[0])
    def step(x, y):
        input_map = dict(zip(user, [x, y]))
        input_map.update({k: capture(e) for k, e in caps})
        (loss,) = tf.graph_util.import_graph_def(renamed, input_map=input_map,
                                                 return_elements=[out], name=prefix)
        return loss

    inverse = {f"{prefix}/{v}": k for k, v in mapping.items()}
    return step, inverse


@pytest.mark.parametrize("name", ["mlp_l1", "small_cnn", "shared_kernel"])
@pytest.mark.parametrize("prefix", ["renamed", "outer/scope"])
def test_renamed_graph_gives_same_sites(name, prefix):
    module = make_module(name)
    original = svgd_rewrite.analyze_step(module.train)
    step, inverse = _renamed_step(module, prefix)
    renamed = svgd_rewrite.analyze_step(step, variables=module.variables)
    def key(s):
        return (s.variable, s.op, s.param_input, s.accumulator_shape)
    assert [key(s) for s in renamed.sites] == [key(s) for s in original.sites]
    assert [inverse[s.node] for s in renamed.sites] == [s.node for s in original.sites]
    assert [inverse[s.gradient_op] for s in renamed.sites] == [s.gradient_op for s in original.sites]
    assert [(k.op, k.variable) for k in renamed.skipped] == [(k.op, k.variable) for k in original.skipped]


def test_l1_abs_keeps_identity_with_reason():
    report = svgd_rewrite.analyze_step(make_module("mlp_l1").train)
    abs_nodes = [k for k in report.skipped if k.op == "Abs"]
    assert sorted(k.variable for k in abs_nodes) == ["w0", "w1", "w2"]
    assert all("not linear in θ" in k.reason for k in abs_nodes)
    assert all(s.op == "MatMul" for s in report.sites) and len(report.sites) == 3


def test_bias_add_is_opt_in():
    report = svgd_rewrite.analyze_step(make_module("mlp_bias").train)
    assert [s.op for s in report.sites] == ["MatMul", "MatMul"]
    assert {k.op: k.reason for k in report.skipped}["BiasAdd"].startswith("op BiasAdd is not in ops")
    opted = svgd_rewrite.analyze_step(make_module("mlp_bias").train,
                                      ops=["MatMul", "Conv2D", "BiasAdd"])
    assert sorted(s.op for s in opted.sites) == ["BiasAdd", "BiasAdd", "MatMul", "MatMul"]


def test_ops_filter_excludes_default_op():
    report = svgd_rewrite.analyze_step(make_module("small_cnn").train, ops=["Conv2D"])
    assert [s.op for s in report.sites] == ["Conv2D"] * 3
    reasons = {k.op: k.reason for k in report.skipped}
    assert sorted(reasons) == ["AddV2", "MatMul"]  # the Dense kernel, and its bias's add
    assert "not in ops" in reasons["MatMul"] and "elementwise" in reasons["AddV2"]


def test_nested_function_sites_are_found():
    report = svgd_rewrite.analyze_step(make_module("nested_mlp").train)
    assert sorted(s.variable for s in report.sites) == ["w0", "w1", "w2"]
    assert not report.skipped


def test_accumulator_shapes_follow_sigma_prime():
    full = svgd_rewrite.analyze_step(make_module("small_cnn").train, granularity="full")
    channel = svgd_rewrite.analyze_step(make_module("small_cnn").train, granularity="channel")
    assert [s.accumulator_shape for s in full.sites] == [[8, 8, 4], [3, 3, 6], [2, 2, 3], [3]]
    assert [s.accumulator_shape for s in channel.sites] == [[4], [6], [3], [3]]
    left = svgd_rewrite.analyze_step(make_module("matmul_transposes").train)
    assert [s.accumulator_shape for s in left.sites] == [[5], [4], [5], [3], [4], [5], [4], [3]]
    assert [s.param_input for s in left.sites] == [1, 1, 1, 1, 0, 0, 0, 0]
