"""The inserted subgraph runs wherever TensorFlow runs: XLA (jit_compile kept, or an XLA
wrapper around the rewritten step), TFLite (builtins only), and it is validated after surgery."""
import contextlib
import io
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import svgd_rewrite
from fixtures.models import random_batch
from fixtures.saved_models import build
from helpers import assert_close, make_module, module_values
from svgd_rewrite import surgery
from svgd_rewrite.errors import SurgeryError
from svgd_rewrite.load import MARKER_NODE


def _inserted_ops(step) -> set[str]:
    return {n.op for n in step.graph_def.node if n.name in step.edits.inserted_nodes() and n.name != MARKER_NODE}


def test_inserted_ops_are_the_portable_set():
    """portable=True (and every jit-compiled step) inserts only XLA/TFLite ops; the default
    runtime's form adds the one-pass EuclideanNorm and nothing else."""
    portable = _inserted_ops(svgd_rewrite.rewrite(make_module("small_cnn").train, scale=0.01,
                                                  portable=True))
    assert "EuclideanNorm" not in portable
    assert portable <= set(surgery.INSERTED_OPS) | {"Placeholder"}, portable - set(
        surgery.INSERTED_OPS)
    default = _inserted_ops(svgd_rewrite.rewrite(make_module("small_cnn").train, scale=0.01))
    assert "EuclideanNorm" in default
    assert default <= set(surgery.INSERTED_OPS + surgery.ONE_PASS_OPS) | {"Placeholder"}
    xla = _inserted_ops(svgd_rewrite.rewrite(_xla_train(make_module("small_cnn")), scale=0.01))
    assert "EuclideanNorm" not in xla


def _xla_train(module):
    spec = module.spec
    sig = [tf.TensorSpec((None,) + spec.input_shape, tf.float32), tf.TensorSpec((None,), tf.int32)]
    return tf.function(module._train, input_signature=sig, jit_compile=True)


def test_jit_compile_is_kept_and_matches_the_plain_rewrite():
    xla_module, plain_module = make_module("small_cnn", seed=2), make_module("small_cnn", seed=2)
    xla_step = svgd_rewrite.rewrite(_xla_train(xla_module), scale=0.01)
    plain_step = svgd_rewrite.rewrite(plain_module.train, scale=0.01)
    cf = xla_step.function.get_concrete_function()
    assert cf.function_def.attr["_XlaMustCompile"].b
    assert "_XlaMustCompile" not in plain_step.function.get_concrete_function().function_def.attr
    for i in range(3):
        x, y = random_batch(xla_module.spec, 8, seed=i)
        a, b = float(xla_step(x, y)["loss"]), float(plain_step(x, y)["loss"])
        assert np.isclose(a, b, rtol=1e-5)
        assert_close(module_values(xla_module), module_values(plain_module), 1e-5, f"step {i}")


def test_rewritten_step_compiles_inside_an_xla_wrapper():
    xla_module, plain_module = make_module("small_cnn", seed=3), make_module("small_cnn", seed=3)
    xla_step = svgd_rewrite.rewrite(xla_module.train, scale=0.01, portable=True)
    plain_step = svgd_rewrite.rewrite(plain_module.train, scale=0.01)
    wrapped = tf.function(lambda *a: xla_step(*a), jit_compile=True)
    for i in range(3):
        x, y = random_batch(xla_module.spec, 8, seed=10 + i)
        assert np.isclose(float(wrapped(x, y)["loss"]), float(plain_step(x, y)["loss"]),
                          rtol=1e-5)
        assert_close(module_values(xla_module), module_values(plain_module), 1e-5, f"step {i}")
    hlo = wrapped.experimental_get_compiler_ir(*random_batch(xla_module.spec, 8))(stage="hlo")
    assert "rsqrt" in hlo


def _tflite_ops(path: str) -> set[str]:
    converter = tf.lite.TFLiteConverter.from_saved_model(path, signature_keys=["train", "infer"])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS,
                                           tf.lite.OpsSet.SELECT_TF_OPS]
    converter.experimental_enable_resource_variables = True
    model = converter.convert()
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        tf.lite.experimental.Analyzer.analyze(model_content=model)
    return {line.split()[1].split("(")[0] for line in text.getvalue().splitlines()
            if line.strip().startswith("Op#")}


@pytest.mark.slow
def test_tflite_converts_with_builtins_only_for_the_inserted_ops(tmp_path):
    """The on-device-training SavedModel (train/infer) converts after the rewrite whenever it
    converts before, and the rewrite adds no Flex (Select TF) op."""
    build("mlp_l1", str(tmp_path / "in"))
    cli = subprocess.run([sys.executable, "-m", "svgd_rewrite", str(tmp_path / "in"),
                          str(tmp_path / "out"), "-q", "--portable"], capture_output=True,
                         text=True)
    assert cli.returncode == 0, cli.stderr
    before, after = _tflite_ops(str(tmp_path / "in")), _tflite_ops(str(tmp_path / "out"))
    flex_before = {o for o in before if o.startswith("Flex")}
    flex_after = {o for o in after if o.startswith("Flex")}
    assert flex_after == flex_before
    assert {"RSQRT", "SQUARE", "SELECT"} <= after  # SELECT is SelectV2's builtin


def test_validation_rejects_a_broken_surgery(monkeypatch):
    original = surgery._splice

    def broken(traced, site, *wiring):
        nodes = original(traced, site, *wiring)
        return [n for n in nodes if not n.name.endswith("/rsqrt")]  # ĝ's factor loses an input

    monkeypatch.setattr(surgery, "_splice", broken)
    with pytest.raises(SurgeryError, match="reads missing node"):
        svgd_rewrite.rewrite(make_module("mlp_l1").train)


def test_validation_rejects_a_p_that_does_not_read_g_hat():
    step = svgd_rewrite.rewrite(make_module("mlp_l1").train, post_scale=False)
    site = step.report.sites[0]
    from svgd_rewrite.validate import check_rewritten_graph

    broken = tf.compat.v1.GraphDef()
    broken.CopyFrom(step.graph_def)
    node = next(n for n in broken.node if n.name == site.gradient_op)
    node.input[site.gradient_input] = site.upstream_gradient.removesuffix(":0")
    with pytest.raises(SurgeryError, match=f"site {site.index}"):
        check_rewritten_graph(broken, step.edits, {})


def test_validation_rejects_an_unscaled_reader_of_a_post_scaled_output():
    step = svgd_rewrite.rewrite(make_module("mlp_l1").train)
    site = step.report.sites[0]
    from svgd_rewrite.validate import check_rewritten_graph

    broken = tf.compat.v1.GraphDef()
    broken.CopyFrom(step.graph_def)
    scaled = surgery.inserted_name(site.index, "scaled_0")
    reader = next(n for n in broken.node if scaled in n.input)
    reader.input[list(reader.input).index(scaled)] = site.gradient_op
    with pytest.raises(SurgeryError, match="unscaled"):
        check_rewritten_graph(broken, step.edits, {})


@pytest.mark.parametrize("options,count", [({}, 18), ({"post_scale": False}, 18)])
def test_inserted_nodes_per_site(options, count):
    """docs/algorithm.md's count of inserted nodes (ops and constants, plus the accumulator
    placeholder) for a float32 MatMul site with one application."""
    step = svgd_rewrite.rewrite(make_module("mlp_l1").train, **options)
    per_site = [sum(1 for n in step.graph_def.node
                    if n.name.startswith(surgery.inserted_name(s.index, ""))) for s in
                step.report.sites]
    assert per_site == [count] * len(per_site), per_site
