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
from svgd_rewrite.cli.main import JSON_KEYS, SHARED_KEYS, main

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
    assert rc == 0 and "→" in out and "train" in out and "would transform 3 site(s)" in out
    assert "transformed" not in out and "V_θ→σ" not in out
    rc, out, _ = _run(capsys, "show", inputs / "saved", "--json")
    info = json.loads(out)
    assert rc == 0 and info["version"] and len(info["report"]["sites"]) == 3
    assert any(fn.get("chosen") and fn["name"] == "train" for fn in info["functions"])
    rc, out, _ = _run(capsys, "show", inputs / "model.pb", "-q")
    assert rc == 0 and "TF1 graph" in out and "would transform" in out
    rc, out, _ = _run(capsys, "show", inputs / "m.keras", "-q")
    assert rc == 0 and "Keras model" in out and "d/kernel" in out and "would transform" in out


def test_keras_files_that_cannot_train_get_one_line(inputs, tmp_path, capsys):
    """An uncompiled model says to compile it; a file Keras cannot read says so; nothing is
    written."""
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="d")])
    model.save(str(tmp_path / "uncompiled.keras"))
    (tmp_path / "broken.h5").write_bytes(b"\x89HDF\r\n\x1a\n")
    for name, says in (("uncompiled.keras", "compile it"), ("broken.h5", "cannot load")):
        rc, out, err = _run(capsys, tmp_path / name, tmp_path / "out", "-q")
        assert rc == 2 and err.count("\n") == 1 and says in err, err
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


def _json(capsys, *args) -> dict:
    rc, out, _ = _run(capsys, *args, "--json")
    assert rc == 0, out
    return json.loads(out)


def test_json_keys_are_the_documented_ones_and_shared(inputs, tmp_path, capsys):
    """Each command prints exactly its documented keys, whatever MODEL is; show and the
    rewrite name the same things alike (``function`` is the name, not a display string)."""
    shows = [_json(capsys, "show", inputs / name) for name in ("saved", "model.pb", "m.keras")]
    rewrites = [_json(capsys, inputs / "saved", tmp_path / "a"),
                _json(capsys, inputs / "model.pb", tmp_path / "b"),
                _json(capsys, inputs / "saved", "--dry-run")]
    assert all(set(p) == set(JSON_KEYS["show"]) for p in shows)
    assert all(set(p) == set(JSON_KEYS["rewrite"]) for p in rewrites)
    assert set(SHARED_KEYS) == set(JSON_KEYS["show"]) & set(JSON_KEYS["rewrite"])
    for show, rewrite in zip(shows[:2], rewrites[:2]):
        for key in ("input", "kind", "function", "signature", "train_op", "variable_kind",
                    "options", "warnings"):
            assert show[key] == rewrite[key], key
        assert show["report"]["sites"] == rewrite["report"]["sites"]
    assert rewrites[0]["function"] == "train" and rewrites[0]["signature"] == "train"
    assert rewrites[1]["function"] is None and rewrites[1]["train_op"] == "train"
    assert shows[2]["kind"] == "Keras model" and shows[2]["model"] and shows[2]["kernels"]
    assert shows[2]["function"] == "train" and shows[2]["report"]["sites"]
    assert rewrites[2]["dry_run"] is True and rewrites[2]["out_dir"] is None
    rc, out, _ = _run(capsys, tmp_path / "missing", tmp_path / "o", "--json")
    assert rc == 2 and set(json.loads(out)) == set(JSON_KEYS["error"])
    assert all(text.strip() for keys in JSON_KEYS.values() for text in keys.values())


def test_dry_run_text_says_would_transform(inputs, capsys):
    rc, out, _ = _run(capsys, inputs / "saved", "--dry-run", "-v")
    assert rc == 0 and "would transform 3 site(s)" in out and "site(s) transformed" not in out
    assert "reading g as its input k" in out  # the legend line under the table


def test_example_rerun_replaces_only_its_own_output(tmp_path, capsys):
    ex = tmp_path / "ex"
    assert _run(capsys, "--example", ex, "-q")[0] == 0
    assert (ex / "paper_mlp" / "svgd_manifest.json").exists()  # built as the tool's output
    rc, out, err = _run(capsys, "--example", ex)
    assert rc == 0 and "5 site(s) transformed" in out, err
    assert (ex / "paper_mlp_svgd" / "saved_model.pb").exists()
    assert sorted(os.listdir(ex)) == ["paper_mlp", "paper_mlp_svgd"]  # no leftovers
    for name in ("paper_mlp_svgd", "paper_mlp"):  # a user's folder there: refused, untouched
        user = tmp_path / f"user_{name}"
        (user / name).mkdir(parents=True)
        (user / name / "notes.txt").write_text("mine")
        rc, _, err = _run(capsys, "--example", user)
        lines = [ln for ln in err.splitlines() if not STAGE_LINE.match(ln)]
        assert rc == 2 and len(lines) == 1 and "not svgd-rewrite's own" in lines[0], err
        assert os.listdir(user) == [name] and os.listdir(user / name) == ["notes.txt"]
    (ex / "paper_mlp_svgd" / "extra.txt").write_text("added by hand")
    assert _run(capsys, "--example", ex, "-q")[0] == 2  # no longer provably the tool's
    assert (ex / "paper_mlp_svgd" / "extra.txt").read_text() == "added by hand"


def test_readme_figure_requires_an_output_folder(capsys):
    from fixtures.readme_figure import parse_args

    with pytest.raises(SystemExit) as e:
        parse_args([])
    assert e.value.code == 2 and "OUT_DIR" in capsys.readouterr().err
    assert parse_args(["somewhere"]).out_dir == "somewhere"
