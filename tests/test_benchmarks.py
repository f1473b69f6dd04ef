"""The benchmark scripts' --quick modes run and produce complete, finite results.

(No timing is asserted: speed targets live in benchmarks/, measured side by side.)
"""
import json
import math
import os
import statistics
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_quick(name, out):
    env = {**os.environ, "PYTHONPATH": ROOT}
    proc = subprocess.run([sys.executable, "-m", f"benchmarks.{name}", "--quick", "--out", str(out)],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out / f"{name}_quick.json") as f:
        payload = json.load(f)
    assert payload["quick"] is True and payload["machine"]["tensorflow"]
    return payload["results"], proc.stdout


def finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def test_step_time_quick(tmp_path):
    results, stdout = run_quick("step_time", tmp_path)
    assert set(results) == {"mnist_mlp"}
    for r in results.values():
        for key in ("sgd_ms", "svgd_ms", "svgd_channel_ms", "svgd_auto_ms", "peer_ms", "adam_ms",
                    "baseline_ms", "svgd_over_baseline", "svgd_over_peer", "sgd_xla_ms",
                    "svgd_xla_ms", "peer_xla_ms", "adam_xla_ms", "svgd_xla_over_sgd"):
            assert finite(r[key]) and r[key] > 0, key
        assert all(finite(v) and v > 0 for v in r["nodes_per_site"].values())
    assert "SVGD/peer" in stdout


def test_recurrent_step_time_quick(tmp_path):
    results, stdout = run_quick("recurrent_step_time", tmp_path)
    assert set(results) == {"lstm"} and results["lstm"]["sites"] == 3  # kernel, recurrent, Dense
    for key in ("sgd_ms", "svgd_ms", "adam_ms", "svgd_over_sgd", "svgd_over_adam"):
        assert finite(results["lstm"][key]) and results["lstm"][key] > 0, key
    assert "SVGD/Adam" in stdout


def test_the_hand_written_peer_trains_like_the_rewrite():
    """benchmarks.peer_svgd (tf.custom_gradient, pre-scaled g) and the rewrite (post-scaled,
    one-pass reduction) give the same kernels after 3 steps (≤1e-5)."""
    import keras
    import numpy as np
    import tensorflow as tf

    import svgd_rewrite
    from benchmarks.peer_svgd import make_peer
    from fixtures import keras_models

    def build():
        keras.utils.set_random_seed(0)
        return keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3,
                                 padding="same", activation="relu"), keras.layers.Flatten(),
                                 keras.layers.Dense(5)])

    peer_model, model = build(), build()
    make_peer(peer_model, scale=0.01)
    peer = keras_models.train_step(peer_model, keras.optimizers.SGD(0.05), l1=0)
    svgd = svgd_rewrite.rewrite(keras_models.train_step(model, keras.optimizers.SGD(0.05),
                                                        l1=0), scale=0.01)
    rng = np.random.default_rng(0)
    for _ in range(3):
        x = tf.constant(rng.normal(size=(16, 8, 8, 3)).astype(np.float32))
        y = tf.constant(rng.integers(0, 5, 16).astype(np.int32))
        assert float(peer(x, y)) == pytest.approx(float(svgd(x, y)), rel=1e-5)
    for a, b in zip(peer_model.weights, model.weights):
        if "kernel" in a.path:
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-7)


def test_memory_quick(tmp_path):
    results, _ = run_quick("memory", tmp_path)
    assert results["mnist_mlp"]["params"] == 245_482
    assert results["cifar_vgg"]["params"] == 46_126
    assert results["mnist_mlp"]["svgd_full"]["floats"] == 490
    for r in results.values():
        assert r["rmsprop"]["floats"] == r["params"] and r["adam"]["floats"] == 2 * r["params"]
        assert r["svgd_channel"]["floats"] <= r["svgd_full"]["floats"]


def test_rewrite_time_quick(tmp_path):
    results, _ = run_quick("rewrite_time", tmp_path)
    models = [k for k in results if k.startswith("resnet")]
    assert len(models) == 3
    for k in models:
        for key in ("nodes", "trace_s", "rewrite_s", "rewrite_over_trace", "rewrite_us_per_node"):
            assert finite(results[k][key]) and results[k][key] > 0
    assert finite(results["summary"]["per_node_max_over_min"])
    trees = [k for k in results if k.startswith("tree_depth")]
    assert len(trees) == 2 and all(results[k]["sites"] > 0 for k in trees)


def test_fit_throughput_quick(tmp_path):
    results, stdout = run_quick("fit_throughput", tmp_path)
    r = results["mnist_mlp"]
    assert finite(r["sgd_steps_per_s"]) and finite(r["svgd_steps_per_s"])
    assert "SVGD/SGD" in stdout


def test_convergence_quick(tmp_path):
    results, stdout = run_quick("convergence", tmp_path)
    for kind in ("mlp", "cnn"):
        methods = {"sgd", "adam", "svgd"} | ({"svgd_channel"} if kind == "cnn" else set())
        assert set(results[kind]) == methods | {"paired"}
        for method in methods:
            r = results[kind][method]
            assert 0 <= r["test_error_mean"] <= 1 and finite(r["test_error_std"])
            assert len(r["steps"]) == len(r["test_error_curve_mean"]) > 0
            assert r["configurations_tried"] >= 1 and finite(r["ms_per_step"])
        assert results[kind]["paired"]["seeds"] == 2
    assert os.path.getsize(tmp_path / results["settings"]["png"]) > 10_000


def test_scaling_quick(tmp_path):
    results, stdout = run_quick("scaling", tmp_path)
    r = results["mnist_mlp"]
    for key in ("sgd_1r_ms", "svgd_1r_ms", "adam_1r_ms", "sgd_2r_ms", "svgd_2r_ms", "adam_2r_ms",
                "svgd_over_sgd_2r", "adam_over_sgd_2r"):
        assert finite(r[key]) and r[key] > 0, key
    # SVGD all-reduces each site's r-sized statistics plus a count, on top of the gradients:
    # the paper MLP's 490 accumulator floats + 5 counts against 245,482 gradient floats.
    assert r["gradient_floats"] == 245_482 and r["svgd_extra_floats"] == 495
    assert "all-reduced floats" in stdout


def test_diagnostics_cost_quick(tmp_path):
    results, stdout = run_quick("diagnostics_cost", tmp_path)
    r = results["mnist_mlp"]
    modes = {"none", "every_step", "every_step_histograms_every_step",
             "every_step_ratio_every_10", "every_10", "every_100"}
    assert set(r["ms_per_step"]) == set(r["ms_per_step_without"]) == modes
    for mode in modes:  # each mode on the same models with and without the callback
        assert finite(r["ms_per_step"][mode]) and r["ms_per_step_without"][mode] > 0
        assert len(r["each_over_without"][mode]) == r["instances"]
        assert r["over_without"][mode] == pytest.approx(statistics.mean(
            r["each_over_without"][mode]))
    assert "every_100" in stdout
