"""Trust: OUT_DIR is never the user's directory, claims are atomic, bad input always exits 2
with one line and writes nothing, accumulators never hold inf/NaN."""
from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.framework import graph_pb2
from tensorflow.core.protobuf import meta_graph_pb2

import svgd_rewrite
from svgd_rewrite.cli.main import main
from fixtures import tf1_graphs
from fixtures.saved_models import build

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    """A TF1 MLP as .pb, .pbtxt and .meta (+ checkpoint), and a SavedModel."""
    base = tmp_path_factory.mktemp("inputs")
    g = tf1_graphs.build("mlp_l1")
    with g.graph.as_default(), tf.compat.v1.Session() as sess:
        sess.run(g.init_op)
        tf.compat.v1.train.Saver().save(sess, str(base / "model.ckpt"))
        gd = g.graph.as_graph_def()
    (base / "model.pb").write_bytes(gd.SerializeToString())
    (base / "model.pbtxt").write_text(text_format.MessageToString(gd))
    build("mlp_l1", str(base / "saved"))
    return base


def _cli(capsys, *args) -> tuple[int, str]:
    capsys.readouterr()
    rc = main([str(a) for a in args] + ["-q"])
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("out", ["", ".", "CWD"])
def test_current_directory_is_never_replaced(graphs, tmp_path, monkeypatch, capsys, out):
    user = tmp_path / "user"
    (user / "sub").mkdir(parents=True)
    (user / "notes.txt").write_text("mine")
    monkeypatch.chdir(user)
    target = str(user) if out == "CWD" else out
    for extra in ([], ["--overwrite"]):
        rc, err = _cli(capsys, graphs / "model.pb", target, *extra)
        assert rc == 2 and err.count("\n") == 1, err
        assert sorted(os.listdir(user)) == ["notes.txt", "sub"]
        assert (user / "notes.txt").read_text() == "mine"


def test_overwrite_replaces_only_a_previous_output(graphs, tmp_path, capsys):
    out = tmp_path / "out"
    assert _cli(capsys, graphs / "model.pb", out)[0] == 0
    assert _cli(capsys, graphs / "model.pb", out)[0] == 2  # exists, no --overwrite
    assert _cli(capsys, graphs / "model.pb", out, "--overwrite")[0] == 0
    (out / "mine.txt").write_text("x")
    rc, err = _cli(capsys, graphs / "model.pb", out, "--overwrite")
    assert rc == 2 and "holds 'mine.txt'" in err and err.count("\n") == 1
    assert (out / "mine.txt").exists() and (out / "model.pb").exists()


def test_empty_existing_directory_and_symlink_are_filled_in_place(graphs, tmp_path, capsys):
    real = tmp_path / "real"
    real.mkdir()
    os.chmod(real, 0o755)
    link = tmp_path / "link"
    link.symlink_to(real)
    assert _cli(capsys, graphs / "model.pb", link)[0] == 0
    assert link.is_symlink() and (real / "model.pb").exists()
    assert oct(os.stat(real).st_mode & 0o777) == oct(0o755)
    assert not [p for p in os.listdir(tmp_path) if "svgd-" in p]  # no staging left


def test_new_out_dir_follows_the_umask(graphs, tmp_path, capsys):
    old = os.umask(0o022)
    try:
        assert _cli(capsys, graphs / "model.pb", tmp_path / "new")[0] == 0
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "new").st_mode & 0o777 == 0o755


def test_stale_staging_of_a_dead_process_is_removed(graphs, tmp_path, capsys):
    """A staging directory carrying the marker the tool writes at its creation (the dead
    process's pid and the token of its name) is the tool's: removed; a look-alike without it
    (a user's folder, a forged marker) is not."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".out.svgd-tmp-{dead.pid}-abc"
    stale.mkdir()
    (stale / "half.pb").write_bytes(b"x")
    (stale / ".svgd-staging").write_text(json.dumps({"tool": "svgd-rewrite", "pid": dead.pid,
                                                     "token": "abc"}))
    mine = tmp_path / f".out.svgd-tmp-{dead.pid}-thesis"
    mine.mkdir()
    (mine / "thesis.tex").write_text("precious")
    forged = tmp_path / f".out.svgd-tmp-{dead.pid}-xyz"
    forged.mkdir()
    (forged / "data.csv").write_text("mine")
    (forged / ".svgd-staging").write_text(json.dumps({"tool": "svgd-rewrite", "pid": dead.pid,
                                                      "token": "abc"}))  # another name's
    assert _cli(capsys, graphs / "model.pb", tmp_path / "out")[0] == 0
    assert not stale.exists()
    assert (mine / "thesis.tex").read_text() == "precious"
    assert (forged / "data.csv").read_text() == "mine"


@pytest.mark.slow
def test_two_concurrent_writers_one_wins(graphs, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": ROOT}
    cmd = [sys.executable, "-m", "svgd_rewrite", str(graphs / "saved"), str(out), "-q"]
    procs = [subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(rc for rc, _ in results)
    assert codes == [0, 2], results
    loser = next(err for rc, err in results if rc == 2)
    assert loser.count("\n") == 1 and "OUT_DIR" in loser
    assert (out / "saved_model.pb").exists() and (out / "svgd_report.json").exists()
    assert tf.saved_model.load(str(out)).train is not None


@pytest.mark.parametrize("option", [["--epsilon", "1e-46"], ["--scale", "1e39"],
                                    ["--scale", "0"], ["--rho", "1"]])
def test_options_that_break_float32_exit_2(graphs, tmp_path, capsys, option):
    rc, err = _cli(capsys, graphs / "model.pb", tmp_path / "out", *option)
    assert rc == 2 and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("value", [True, "0.1", None])
def test_options_of_the_wrong_type_are_refused(value):
    with pytest.raises(svgd_rewrite.InvalidOptionError):
        svgd_rewrite.rewrite(lambda: None, scale=value)


def test_hostile_function_name_stays_on_one_line(graphs, tmp_path, capsys):
    rc, err = _cli(capsys, graphs / "saved", tmp_path / "out", "--function",
                   "train\nsvgd-rewrite: done\x1b[31m")
    assert rc == 2 and err.count("\n") == 1 and "\x1b" not in err, err


def test_variable_named_with_a_backslash_exports_to_svg(tmp_path):
    import shutil

    if shutil.which("dot") is None:
        pytest.skip("Graphviz is not installed")
    w = tf.Variable(tf.ones((3, 2)), name="w0\\")

    @tf.function(input_signature=[tf.TensorSpec((4, 3))])
    def step(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(tf.matmul(x, w)))
        w.assign_sub(0.1 * tape.gradient(loss, w))
        return loss

    result = svgd_rewrite.rewrite(step)
    assert result.report.sites[0].variable == "w0\\"
    svgd_rewrite.export(result, str(tmp_path), ["svg", "html"])
    svgs = list((tmp_path / "graphs" / "svg").glob("site_0_*.svg"))
    assert len(svgs) == 3 and all("w0\\" in p.read_text() for p in svgs)


# --- the fuzz loop: mutated inputs exit 0 or 2, one stderr line, nothing written -------------

def _digest(path) -> str:
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in sorted(os.walk(path)):
        dirnames.sort()
        for name in sorted(filenames):
            with open(os.path.join(dirpath, name), "rb") as f:
                h.update(name.encode() + f.read())
    if os.path.isfile(path):
        with open(path, "rb") as f:
            h.update(f.read())
    return h.hexdigest()


def _mutate_graph(gd: graph_pb2.GraphDef, rng: random.Random) -> graph_pb2.GraphDef:
    gd = graph_pb2.GraphDef.FromString(gd.SerializeToString())
    nodes = list(gd.node)
    node = rng.choice(nodes)
    kind = rng.randrange(9)
    if kind == 0 and node.input:  # a dangling input
        node.input[rng.randrange(len(node.input))] = "no_such_node"
    elif kind == 1 and node.input:  # a malformed port
        node.input[0] = node.input[0].split(":")[0] + ":abc"
    elif kind == 2:  # a cycle
        other = rng.choice(nodes)
        node.input.append(other.name)
        other.input.append(node.name)
    elif kind == 3:  # a bad dtype enum
        for attr in node.attr.values():
            if attr.HasField("type"):
                attr.type = 999
                break
    elif kind == 4 and node.attr:  # a missing attribute
        del node.attr[rng.choice(sorted(node.attr))]
    elif kind == 5:  # an unknown op
        node.op = "NoSuchOp"
    elif kind == 6:  # a node removed
        gd.node.remove(node)
    elif kind == 7:  # a call to a missing function
        call = gd.node.add(name="call", op="PartitionedCall")
        call.attr["f"].func.name = "missing_function"
    else:  # a negative shape
        for attr in node.attr.values():
            if attr.HasField("shape") and attr.shape.dim:
                attr.shape.dim[0].size = -7
                break
    return gd


def _mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    data = bytearray(data)
    kind = rng.randrange(3)
    if kind == 0:
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
    elif kind == 1:
        data = data[: rng.randrange(len(data))]
    else:
        pos = rng.randrange(len(data))
        data[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    return bytes(data)


def _case(graphs, work, rng: random.Random, k: int):
    """Write one mutated input under ``work``; returns its path."""
    case = work / f"case{k}"
    case.mkdir()
    kind = rng.choice(["pb", "pbtxt", "meta", "ckpt", "collection", "saved"])
    gd = graph_pb2.GraphDef.FromString((graphs / "model.pb").read_bytes())
    if kind == "pb":
        data = (_mutate_graph(gd, rng).SerializeToString() if rng.random() < 0.6
                else _mutate_bytes(gd.SerializeToString(), rng))
        (case / "model.pb").write_bytes(data)
        return case / "model.pb"
    if kind == "pbtxt":
        text = (text_format.MessageToString(_mutate_graph(gd, rng)) if rng.random() < 0.7
                else _mutate_bytes(text_format.MessageToString(gd).encode(), rng).decode(
                    "utf-8", "replace"))
        (case / "model.pbtxt").write_text(text)
        return case / "model.pbtxt"
    meta = meta_graph_pb2.MetaGraphDef.FromString((graphs / "model.ckpt.meta").read_bytes())
    for suffix in (".index", ".data-00000-of-00001"):
        (case / f"model.ckpt{suffix}").write_bytes((graphs / f"model.ckpt{suffix}").read_bytes())
    if kind == "meta":
        meta.graph_def.CopyFrom(_mutate_graph(meta.graph_def, rng))
    elif kind == "ckpt":
        suffix = rng.choice([".index", ".data-00000-of-00001"])
        target = case / f"model.ckpt{suffix}"
        target.write_bytes(_mutate_bytes(target.read_bytes(), rng))
    elif kind == "collection":
        values = meta.collection_def["trainable_variables"].bytes_list.value
        if rng.random() < 0.5:
            values[0] = _mutate_bytes(values[0], rng)
        else:
            from tensorflow.core.framework import variable_pb2

            v = variable_pb2.VariableDef.FromString(values[0])
            v.variable_name = "no_such_variable:0"
            values[0] = v.SerializeToString()
    else:
        import shutil

        shutil.copytree(graphs / "saved", case / "saved")
        pb = case / "saved" / "saved_model.pb"
        pb.write_bytes(_mutate_bytes(pb.read_bytes(), rng))
        return case / "saved"
    (case / "model.ckpt.meta").write_bytes(meta.SerializeToString())
    return case / "model.ckpt.meta"


def _fuzz(graphs, tmp_path, capsys, cases: int, seed: int):
    rng = random.Random(seed)
    seen = {0: 0, 2: 0}
    for k in range(cases):
        path = _case(graphs, tmp_path, rng, k)
        before = _digest(path.parent)
        out = tmp_path / f"out{k}"
        rc, err = _cli(capsys, path, out)
        assert rc in (0, 2), f"case {k} ({path.name}): exit {rc}: {err}"
        assert _digest(path.parent) == before, f"case {k}: the input changed"
        if rc == 2:
            assert err.count("\n") == 1 and err.startswith("svgd-rewrite: error:"), err
            assert not out.exists(), f"case {k}: OUT_DIR written on error"
        seen[rc] += 1
    assert seen[2] > cases // 4  # the mutations do reach the error paths


def test_fuzzed_inputs_exit_0_or_2(graphs, tmp_path, capsys):
    _fuzz(graphs, tmp_path, capsys, cases=40, seed=1)


@pytest.mark.slow
def test_fuzzed_inputs_exit_0_or_2_many(graphs, tmp_path, capsys):
    _fuzz(graphs, tmp_path, capsys, cases=300, seed=2)


# --- accumulators stay finite ----------------------------------------------------------------

def _regression_step(seed: int):
    rng = np.random.default_rng(seed)
    w1 = tf.Variable(rng.normal(size=(4, 8)).astype(np.float32) * 0.5, name="w1")
    w2 = tf.Variable(rng.normal(size=(8, 1)).astype(np.float32) * 0.5, name="w2")
    opt = keras.optimizers.SGD(0.05, clipvalue=1.0)

    @tf.function(input_signature=[tf.TensorSpec((None, 4)), tf.TensorSpec((None, 1))])
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(tf.matmul(tf.tanh(tf.matmul(x, w1)), w2) - y))
        opt.apply_gradients(zip(tape.gradient(loss, [w1, w2]), [w1, w2]))
        return {"loss": loss}

    return step


def _batches(n: int):
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        x = rng.normal(size=(16, 4)).astype(np.float32)
        out.append((x, np.sum(x, axis=1, keepdims=True).astype(np.float32) * 0.3))
    return out


@pytest.mark.parametrize("poison", ["huge_gradient", "inf_input"])
def test_a_poisoned_batch_leaves_accumulators_finite(poison):
    """One batch whose g² overflows float32 (targets of 1e21 make g ~1e20) or whose input holds
    inf (NaN gradients: neither SGD nor SVGD recovers from NaN parameters), then 20 ordinary
    batches: r stays finite throughout, and after the huge gradient the loss recovers like the
    SGD step's (both clip by value)."""
    svgd = svgd_rewrite.rewrite(_regression_step(0), scale=0.1)
    sgd = _regression_step(0)
    ordinary = _batches(21)
    x0, _ = ordinary[0]
    bad = ((x0, np.full((16, 1), 1e21, np.float32)) if poison == "huge_gradient"
           else (np.where(np.arange(64).reshape(16, 4) == 5, np.inf, x0).astype(np.float32),
                 np.zeros((16, 1), np.float32)))
    first = float(svgd(*ordinary[0])["loss"])
    sgd(*ordinary[0])
    svgd(*bad)
    sgd(*bad)
    for acc in svgd.accumulators:
        assert np.all(np.isfinite(acc.numpy()))
    for x, y in ordinary[1:]:
        svgd_loss, sgd_loss = float(svgd(x, y)["loss"]), float(sgd(x, y)["loss"])
        for acc in svgd.accumulators:
            assert np.all(np.isfinite(acc.numpy()))
    if poison == "huge_gradient":  # clipvalue bounds the bad step: both recover
        assert np.isfinite(sgd_loss) and sgd_loss < first
        assert np.isfinite(svgd_loss) and svgd_loss < first and svgd_loss <= 2 * sgd_loss


# --- environment errors and the stage lines ------------------------------------------------

def test_full_disk_while_writing_exits_2_and_leaves_nothing(graphs, tmp_path, capsys,
                                                            monkeypatch):
    import errno
    import json as json_module

    from svgd_rewrite import graphdef

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(graphdef.json, "dump", no_space)
    rc, err = _cli(capsys, graphs / "model.pb", tmp_path / "out")
    monkeypatch.setattr(graphdef.json, "dump", json_module.dump)
    assert rc == 2 and err.count("\n") == 1 and "No space left" in err, err
    assert os.listdir(tmp_path) == []  # neither OUT_DIR nor its staging directory


def test_unreadable_model_file_exits_2(graphs, tmp_path, capsys, monkeypatch):
    import builtins

    target = str(graphs / "model.pbtxt")
    real_open = builtins.open

    def guarded(path, *args, **kwargs):
        if str(path) == target:
            raise PermissionError(13, "Permission denied")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded)
    rc, err = _cli(capsys, target, tmp_path / "out")
    monkeypatch.setattr(builtins, "open", real_open)
    assert rc == 2 and err.count("\n") == 1 and "Permission denied" in err, err
    assert not (tmp_path / "out").exists()


def test_example_into_an_unwritable_place_exits_2(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    rc, err = _cli(capsys, "--example", blocker / "sub")
    assert rc == 2 and err.count("\n") == 1, err
    assert blocker.read_text() == "not a directory"


def test_verbose_always_shows_the_stages(graphs, tmp_path, capsys):
    capsys.readouterr()
    assert main([str(graphs / "model.pb"), str(tmp_path / "out"), "-v"]) == 0
    err = capsys.readouterr().err
    stages = [line.rsplit("] ", 1)[1] for line in err.splitlines() if "svgd-rewrite: [" in line]
    assert stages[:2] == ["import", "load"] and "surgery" in stages and "write" in stages


def _nested_saved_model(path, depth: int) -> None:
    """A SavedModel whose train function calls ``depth`` nested tf.functions."""
    import tensorflow as tf

    def wrap(inner):
        @tf.function
        def f(x):
            return inner(x) + 1.0
        return f

    fn = tf.function(lambda x: x * 2.0)
    for _ in range(depth - 1):
        fn = wrap(fn)
    module = tf.Module()
    module.v = tf.Variable(1.0)
    module.train = tf.function(lambda x: fn(x) * module.v,
                               input_signature=[tf.TensorSpec([], tf.float32)])
    tf.saved_model.save(module, str(path))


def test_calls_nested_too_deep_are_refused_before_tensorflow_loads_the_model(tmp_path):
    """The nesting depth is read from saved_model.pb before TensorFlow builds anything; the
    line says which limit and what to do."""
    from svgd_rewrite.errors import LoadError
    from svgd_rewrite.savedmodel import check_saved_model_dir

    _nested_saved_model(tmp_path / "deep", 40)
    with pytest.raises(LoadError) as exc:
        check_saved_model_dir(str(tmp_path / "deep"))
    message = str(exc.value)
    assert "levels deep" in message and "limit of 32" in message and "\n" not in message
    assert "fewer nested tf.function calls" in message
    _nested_saved_model(tmp_path / "shallow", 8)
    check_saved_model_dir(str(tmp_path / "shallow"))  # within the limit: accepted
