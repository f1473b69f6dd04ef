"""What a user of TensorFlow tooling expects from the command line: ``show``, Keras files
pointed at the library, one JSON object (and JSON errors), stage lines that are not only for
terminals, argument errors before TensorFlow is imported, and granularity="auto"."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import keras
import pytest
import tensorflow as tf

import svgd_rewrite
from fixtures import tf1_graphs
from fixtures.saved_models import build
from helpers import STAGE_LINE, make_module
from svgd_rewrite.cli.main import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    base = tmp_path_factory.mktemp("usage")
    build("mlp_l1", str(base / "saved"))
    g = tf1_graphs.build("mlp_l1")
    (base / "model.pb").write_bytes(g.graph.as_graph_def().SerializeToString())
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="d")])
    model.compile(optimizer="sgd", loss="mse")
    model.save(str(base / "m.keras"))
    return base


def _run(capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_show_lists_functions_and_the_sites_a_rewrite_would_find(inputs, capsys):
    rc, out, _ = _run(capsys, "show", inputs / "saved", "-q")
    assert rc == 0 and "→" in out and "train" in out and "site(s) transformed" in out
    rc, out, _ = _run(capsys, "show", inputs / "saved", "--json")
    info = json.loads(out)
    assert rc == 0 and info["version"] and len(info["report"]["sites"]) == 3
    assert any(fn.get("chosen") and fn["name"] == "train" for fn in info["functions"])
    rc, out, _ = _run(capsys, "show", inputs / "model.pb", "-q")
    assert rc == 0 and "TF1 graph" in out and "site(s) transformed" in out
    rc, out, _ = _run(capsys, "show", inputs / "m.keras", "-q")
    assert rc == 0 and "d/kernel" in out and "svgd_rewrite.keras.enable" in out


@pytest.mark.parametrize("name", ["m.keras", "m.h5"])
def test_keras_files_are_pointed_at_the_library(inputs, tmp_path, capsys, name):
    path = inputs / name
    if not path.exists():
        path.write_bytes(b"\x89HDF\r\n\x1a\n")  # the name is what is checked, before loading
    rc, out, err = _run(capsys, path, tmp_path / "out", "-q")
    assert rc == 2 and err.count("\n") == 1 and "svgd_rewrite.keras.enable" in err
    assert not (tmp_path / "out").exists()


def test_json_is_one_object_and_errors_are_json_too(inputs, tmp_path, capsys):
    rc, out, err = _run(capsys, inputs / "saved", tmp_path / "out", "--json")
    payload = json.loads(out)
    assert rc == 0 and err == ""  # no stage lines with --json
    assert {"version", "input", "function", "out_dir", "files", "dry_run", "options", "report",
            "warnings"} <= set(payload)
    assert "svgd_manifest.json" in payload["files"] and payload["dry_run"] is False
    assert not any(os.path.isabs(f) for f in payload["files"])
    rc, out, _ = _run(capsys, tmp_path / "missing", tmp_path / "o2", "--json")
    assert rc == 2 and json.loads(out)["exit"] == 2 and json.loads(out)["error"]


def test_stage_lines_without_a_terminal_and_export_counts(inputs, tmp_path, capsys):
    rc, _, err = _run(capsys, inputs / "saved", tmp_path / "out", "--export", "dot")
    stages = [m.group(1) for m in map(STAGE_LINE.match, err.splitlines()) if m]
    assert rc == 0 and stages[:2] == ["import", "load"] and "write" in stages
    assert "\r" not in err and any("export 1/10 pictures" in line for line in err.splitlines())
    rc, _, err = _run(capsys, inputs / "saved", tmp_path / "quiet", "-q")
    assert rc == 0 and err == ""


@pytest.mark.parametrize("args,expected", [
    (["--export", ""], "--export is empty"),
    (["--scale", "0"], "--transform identity"),
])
def test_option_errors_say_what_to_do(inputs, tmp_path, capsys, args, expected):
    rc, _, err = _run(capsys, inputs / "saved", tmp_path / "out", *args)
    lines = [ln for ln in err.splitlines() if not STAGE_LINE.match(ln)]
    assert rc == 2 and len(lines) == 1 and expected in lines[0], err
    assert not (tmp_path / "out").exists()


def test_example_fit_refuses_model_and_out_dir(tmp_path, capsys):
    rc, _, err = _run(capsys, "--example-fit", tmp_path / "m", "-q")
    assert rc == 2 and "--example-fit takes no MODEL" in err


def test_argument_errors_come_before_tensorflow_is_imported(tmp_path):
    code = ("import sys; from svgd_rewrite.cli.main import main; "
            "rc = main([sys.argv[1], '--scale', 'abc']); "
            "print(rc, 'tensorflow' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "nope")],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": ROOT})
    assert proc.stdout.split() == ["2", "False"], proc.stderr
    assert proc.stderr.count("\n") == 1


def test_auto_granularity_is_channel_exactly_where_full_r_exceeds_the_kernel():
    module = make_module("small_cnn")
    full = svgd_rewrite.rewrite(module.train)
    auto = svgd_rewrite.rewrite(make_module("small_cnn").train, granularity="auto")
    sizes = {v.name.split(":")[0]: v.shape.num_elements() for v in module.params.values()}
    kinds = []
    for f, a in zip(full.report.sites, auto.report.sites):
        assert f.variable == a.variable
        want = "channel" if f.accumulator_size > sizes[f.variable] else "full"
        assert a.granularity == want, (a.variable, f.accumulator_size, sizes[f.variable])
        kinds.append(want)
    assert set(kinds) == {"channel", "full"}  # the conv sites switch, the Dense ones do not
    out = auto(tf.zeros((8,) + module.spec.input_shape), tf.zeros((8,), tf.int32))
    loss = out["loss"] if isinstance(out, dict) else out
    assert bool(tf.math.is_finite(loss))
