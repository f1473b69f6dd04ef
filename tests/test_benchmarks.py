"""The benchmark scripts' --quick modes run and produce complete, finite results.

(No timing is asserted: speed targets live in benchmarks/, measured side by side.)
"""
import json
import math
import os
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
    assert set(results) == {"mnist_mlp", "cifar_vgg", "resnet20"}
    for r in results.values():
        for key in ("sgd_ms", "svgd_ms", "rmsprop_ms", "adam_ms", "svgd_over_sgd",
                    "rmsprop_over_sgd", "adam_over_sgd", "baseline_ms", "svgd_over_baseline",
                    "sgd_xla_ms", "svgd_xla_ms", "adam_xla_ms", "svgd_over_sgd_xla"):
            assert finite(r[key]) and r[key] > 0, key
    assert "SVGD/SGD" in stdout


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
        assert set(results[kind]) == {"sgd", "rmsprop", "adam", "svgd"}
        for r in results[kind].values():
            assert 0 <= r["test_error_mean"] <= 1 and finite(r["test_error_std"])
            assert len(r["steps"]) == len(r["test_error_curve_mean"]) > 0
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
