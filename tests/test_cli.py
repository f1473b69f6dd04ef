"""The command line end to end, through the real command in subprocesses."""
from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from fixtures.models import random_batch
from fixtures.saved_models import build
from helpers import STAGE_LINE, assert_close, make_module
from oracle import Oracle

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "tests", "scripts", "train_saved_model.py")
LR = 0.01  # fixtures.saved_models.build's default


def run_cli(*args, check_rc=None):
    env = {**os.environ, "PYTHONPATH": ROOT}
    proc = subprocess.run([sys.executable, "-m", "svgd_rewrite", *map(str, args)],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    if check_rc is not None:
        assert proc.returncode == check_rc, proc.stderr + proc.stdout
    return proc


def run_script(*args):
    env = {**os.environ, "PYTHONPATH": ROOT}
    proc = subprocess.run([sys.executable, SCRIPT, *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def tree_hash(path) -> str:
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in sorted(os.walk(path)):
        dirnames.sort()
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            h.update(os.path.relpath(full, path).encode())
            with open(full, "rb") as f:
                h.update(f.read())
    return h.hexdigest()


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    base = tmp_path_factory.mktemp("models")
    paths = {}
    for name in ("paper_mlp", "small_cnn"):
        build(name, str(base / name))
        paths[name] = base / name
    infer_only = make_module("mlp_l1")
    root = tf.Module()
    root.params = list(infer_only.params.values())
    root.infer = infer_only.infer
    tf.saved_model.save(root, str(base / "inference_only"))
    paths["inference_only"] = base / "inference_only"
    return paths


@pytest.fixture(scope="session")
def rewritten_mlp(models, tmp_path_factory):
    out = tmp_path_factory.mktemp("rewritten") / "paper_mlp_svgd"
    proc = run_cli(models["paper_mlp"], out, check_rc=0)
    return out, proc


def _batches(name, tmp_path, n, batch=32):
    spec = make_module(name).spec
    data = {}
    for i in range(n):
        x, y = random_batch(spec, batch, seed=100 + i)
        data[f"x{i}"], data[f"y{i}"] = x.numpy(), y.numpy()
    path = tmp_path / "data.npz"
    np.savez(path, **data)
    return path, data


def _oracle_values(name, data, steps):
    ref = make_module(name, seed=0, lr=LR)
    oracle = Oracle(ref.spec, ref.params, ref.state, learning_rate=LR)
    for i in range(steps):
        oracle.step(tf.constant(data[f"x{i}"]), tf.constant(data[f"y{i}"]))
    values = {v.name: v.numpy() for v in {**ref.params, **ref.state}.values()}
    return values, oracle


@pytest.mark.parametrize("name", ["paper_mlp", "small_cnn"])
def test_cli_rewrite_trains_like_the_oracle(name, models, tmp_path):
    out = tmp_path / "out"
    proc = run_cli(models[name], out, check_rc=0)
    assert "site(s) transformed" in proc.stdout
    assert all(STAGE_LINE.match(ln) for ln in proc.stderr.splitlines()), proc.stderr
    report = json.loads((out / "svgd_report.json").read_text())
    assert report["function"] == "train" and report["signature"] == "train"
    data_path, data = _batches(name, tmp_path, 3)
    run_script(out, data_path, 3, tmp_path / "res.npz")
    got = dict(np.load(tmp_path / "res.npz"))
    want, oracle = _oracle_values(name, data, 3)
    assert_close({k: got[f"var:{k}"] for k in want}, want, 1e-5, name)
    state = {f"var:svgd/{name}:0" for name in ("steps", "scale", "rho", "epsilon")}
    accs = [k for k in got if k.startswith("var:svgd/") and k not in state]
    assert len(accs) == len(report["sites"]) == len(oracle.accumulators)
    assert state <= set(got) and int(got["var:svgd/steps:0"]) == 3  # s, ρ, ε, steps trained
    by_var = {site["variable"]: got[f"var:{site['accumulator']}:0"] for site in report["sites"]}
    want_acc = dict(zip(oracle.site_params, (a.numpy() for a in oracle.accumulators)))
    assert sorted(by_var) == sorted(want_acc)
    assert_close(by_var, want_acc, 1e-5, "accumulators")


def test_signature_trains_too_and_infer_is_unchanged(models, rewritten_mlp, tmp_path):
    out, _ = rewritten_mlp
    data_path, data = _batches("paper_mlp", tmp_path, 3)
    run_script(out, data_path, 3, tmp_path / "sig.npz", "--signature")
    got = dict(np.load(tmp_path / "sig.npz"))
    want, _ = _oracle_values("paper_mlp", data, 3)
    assert_close({k: got[f"var:{k}"] for k in want}, want, 1e-5, "signature")
    run_script(models["paper_mlp"], data_path, 0, tmp_path / "a.npz", "--infer-only")
    run_script(out, data_path, 0, tmp_path / "b.npz", "--infer-only")
    a, b = np.load(tmp_path / "a.npz"), np.load(tmp_path / "b.npz")
    np.testing.assert_array_equal(a["logits"], b["logits"])
    np.testing.assert_array_equal(a["signature_logits"], b["signature_logits"])


def test_accumulators_persist_across_save_and_load(rewritten_mlp, tmp_path):
    out, _ = rewritten_mlp
    data_path, _ = _batches("paper_mlp", tmp_path, 5)
    run_script(out, data_path, 5, tmp_path / "five.npz")
    run_script(out, data_path, 3, tmp_path / "three_two.npz", "--resave", tmp_path / "resaved",
               "--more", 2)
    five, split = dict(np.load(tmp_path / "five.npz")), dict(np.load(tmp_path / "three_two.npz"))
    np.testing.assert_allclose(split["losses"], five["losses"], rtol=1e-6)
    accs = [k for k in five if k.startswith("var:svgd/")]
    assert accs and all(k in split for k in accs)
    for k in five:
        if k.startswith("var:"):
            np.testing.assert_allclose(split[k], five[k], rtol=1e-6, atol=1e-9, err_msg=k)


def test_dry_run_json_and_report_file(models, rewritten_mlp, tmp_path):
    out, proc = rewritten_mlp
    assert "5 site(s) transformed" in proc.stdout and "wrote" in proc.stdout
    dry = run_cli(models["paper_mlp"], tmp_path / "never", "--dry-run", "--json", check_rc=0)
    report = json.loads(dry.stdout)["report"]
    assert [s["accumulator_size"] for s in report["sites"]] == [256, 128, 64, 32, 10]
    assert report["memory"]["params"] == 245_482
    assert not (tmp_path / "never").exists()
    saved = json.loads((out / "svgd_report.json").read_text())
    assert saved["sites"] == report["sites"] and saved["options"]["scale"] == 0.1
    quiet = run_cli(models["small_cnn"], tmp_path / "q", "-q", "--granularity", "channel",
                    "--scale", "0.01", check_rc=0)
    assert quiet.stdout == "" and quiet.stderr == ""
    options = json.loads((tmp_path / "q" / "svgd_report.json").read_text())["options"]
    assert options["granularity"] == "channel" and options["scale"] == 0.01


def test_help_version_and_example(tmp_path):
    helped = run_cli("--help", check_rc=0)
    assert "svgd-rewrite ./my_model ./my_model_svgd" in helped.stdout
    assert run_cli("--version", check_rc=0).stdout.startswith("svgd-rewrite ")
    example = run_cli("--example", tmp_path / "ex", check_rc=0)
    assert "5 site(s) transformed" in example.stdout
    assert (tmp_path / "ex" / "paper_mlp_svgd" / "saved_model.pb").exists()


def _bad_inputs(models, tmp):
    """(name, args, out_dir) for each bad input; each must exit 2 and write nothing."""
    good = models["paper_mlp"]
    cases = []

    def copy(name):
        dst = tmp / name
        shutil.copytree(good, dst)
        return dst

    cases.append(("missing path", [tmp / "nope", tmp / "o1"], tmp / "o1"))
    (tmp / "file.txt").write_text("not a model")
    cases.append(("file instead of dir", [tmp / "file.txt", tmp / "o2"], tmp / "o2"))
    (tmp / "empty").mkdir()
    cases.append(("empty dir", [tmp / "empty", tmp / "o3"], tmp / "o3"))
    truncated = copy("truncated")
    pb = (truncated / "saved_model.pb").read_bytes()
    (truncated / "saved_model.pb").write_bytes(pb[: len(pb) // 3])
    cases.append(("truncated pb", [truncated, tmp / "o4"], tmp / "o4"))
    garbage = copy("garbage")
    (garbage / "saved_model.pb").write_bytes(np.random.default_rng(0).bytes(4096))
    cases.append(("random bytes pb", [garbage, tmp / "o5"], tmp / "o5"))
    novars = copy("novars")
    shutil.rmtree(novars / "variables")
    cases.append(("variables missing", [novars, tmp / "o6"], tmp / "o6"))
    cases.append(("inference only", [models["inference_only"], tmp / "o7"], tmp / "o7"))
    cases.append(("--function naming nothing", [good, tmp / "o8", "--function", "fit"], tmp / "o8"))
    cases.append(("OUT_DIR inside MODEL_DIR", [good, good / "svgd"], good / "svgd"))
    (tmp / "blocker").write_text("a file where the parent directory should be")
    cases.append(("unwritable OUT_DIR parent", [good, tmp / "blocker" / "out"],
                  tmp / "blocker" / "out"))
    cases.append(("bad option", [good, tmp / "o11", "--rho", "1.5"], tmp / "o11"))
    cases.append(("unknown op", [good, tmp / "o12", "--ops", "Relu"], tmp / "o12"))
    cases.append(("unknown export format", [good, tmp / "o14", "--export", "png"], tmp / "o14"))
    return cases


def test_bad_inputs_exit_2_with_one_line_and_write_nothing(models, rewritten_mlp, tmp_path):
    cases = _bad_inputs(models, tmp_path)
    rewritten, _ = rewritten_mlp
    cases.append(("already rewritten", [rewritten, tmp_path / "o13"], tmp_path / "o13"))
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("precious")
    cases.append(("existing non-empty OUT_DIR", [models["paper_mlp"], full], None))
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir()
        os.chmod(locked, 0o500)
        cases.append(("read-only OUT_DIR parent", [models["paper_mlp"], locked / "o"], locked / "o"))
    before = {k: tree_hash(v) for k, v in models.items()}
    before_rewritten = tree_hash(rewritten)
    for name, args, out_dir in cases:
        proc = run_cli(*args)
        assert proc.returncode == 2, f"{name}: rc={proc.returncode} {proc.stderr}"
        lines = [ln for ln in proc.stderr.strip().splitlines() if not STAGE_LINE.match(ln)]
        assert len(lines) == 1 and lines[0].startswith("svgd-rewrite: error: "), f"{name}: {proc.stderr}"
        assert "Traceback" not in proc.stderr
        if out_dir is not None:
            assert not os.path.exists(out_dir), f"{name}: {out_dir} was written"
        leftovers = [p for p in os.listdir(tmp_path) if ".svgd-tmp-" in p]
        assert not leftovers, f"{name}: temporary directories left: {leftovers}"
    assert len(cases) >= 14
    assert (full / "keep.txt").read_text() == "precious" and os.listdir(full) == ["keep.txt"]
    assert {k: tree_hash(v) for k, v in models.items()} == before
    assert tree_hash(rewritten) == before_rewritten


def test_overwrite_replaces_out_dir(models, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    # --overwrite replaces only a previous svgd-rewrite output
    run_cli(models["small_cnn"], out, "--overwrite", "-q", check_rc=2)
    assert (out / "old.txt").read_text() == "old"
    os.remove(out / "old.txt")
    run_cli(models["paper_mlp"], out, "--overwrite", "-q", check_rc=0)
    run_cli(models["small_cnn"], out, "--overwrite", "-q", check_rc=0)
    assert (out / "saved_model.pb").exists() and (out / "svgd_manifest.json").exists()
    assert json.load(open(out / "svgd_report.json"))["sites"]
    assert not [p for p in os.listdir(tmp_path) if ".svgd-" in p]


def test_verbose_shows_traceback_on_error(tmp_path):
    proc = run_cli(tmp_path / "nope", tmp_path / "out", "-v")
    assert proc.returncode == 2 and "Traceback" in proc.stderr


def test_export_with_the_rewrite_and_with_dry_run(models, tmp_path):
    out = tmp_path / "out"
    proc = run_cli(models["small_cnn"], out, "--export", "all", check_rc=0)
    graphs = out / "graphs"
    assert (out / "saved_model.pb").exists() and (graphs / "index.html").exists()
    assert (graphs / "rewritten.graphml").exists() and (graphs / "rewritten_graphs_tuple.npz").exists()
    assert glob.glob(str(graphs / "tensorboard" / "rewritten" / "events.*"))
    assert "graphs in" in proc.stdout and "tensorboard --logdir" in proc.stdout
    dry = tmp_path / "dry"
    proc = run_cli(models["small_cnn"], dry, "--dry-run", "--export", "svg,html", check_rc=0)
    # pictures of what would be rewired, no model (the manifest lists them for --overwrite)
    assert sorted(os.listdir(dry)) == ["graphs", "svgd_manifest.json"]
    assert len(os.listdir(dry / "graphs" / "svg")) == 3 * 4 + 1  # before, after, detail; overview
    assert run_cli(models["small_cnn"], "--dry-run", "--export", "svg").returncode == 2


def test_keras_adam_train_function_saved_model(tmp_path):
    """A SavedModel whose ``train`` applies a Keras 3 Adam: exit 0; a fresh process loads the
    output, trains 3 steps (finite, falling loss) and ``infer`` is unchanged."""
    import keras

    build("mlp_l1", str(tmp_path / "in"), optimizer=keras.optimizers.Adam(0.01))
    proc = run_cli(tmp_path / "in", tmp_path / "out", check_rc=0)
    assert "optimizer with state" in proc.stdout
    assert all(STAGE_LINE.match(ln) for ln in proc.stderr.splitlines()), proc.stderr
    data_path, _ = _batches("mlp_l1", tmp_path, 3)
    run_script(tmp_path / "out", data_path, 3, tmp_path / "res.npz")
    losses = np.load(tmp_path / "res.npz")["losses"]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
    run_script(tmp_path / "in", data_path, 0, tmp_path / "a.npz", "--infer-only")
    run_script(tmp_path / "out", data_path, 0, tmp_path / "b.npz", "--infer-only")
    a, b = np.load(tmp_path / "a.npz"), np.load(tmp_path / "b.npz")
    np.testing.assert_array_equal(a["logits"], b["logits"])
