"""OUT_DIR: only the tool's own files (its manifest) are ever replaced; a kill at any
filesystem call of the commit leaves a complete old or new output (or the old one beside it,
restored by the next run); recursive function libraries, full disks and misuse end in exit 2
with one line."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st
from tensorflow.core.framework import graph_pb2

import svgd_rewrite
from fixtures import tf1_graphs
from fixtures.saved_models import build
from helpers import make_module
from svgd_rewrite import output_dir
from svgd_rewrite.cli.main import main
from svgd_rewrite.validate import library_cycle

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "3"}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    base = tmp_path_factory.mktemp("inputs")
    g = tf1_graphs.build("mlp_l1")
    (base / "model.pb").write_bytes(g.graph.as_graph_def().SerializeToString())
    build("mlp_l1", str(base / "saved"))
    return base


def _cli(capsys, *args) -> tuple[int, str]:
    capsys.readouterr()
    rc = main([str(a) for a in args] + ["-q"])
    return rc, capsys.readouterr().err


def _snapshot(path) -> dict[str, bytes]:
    out = {}
    for dirpath, _, files in os.walk(path):
        for name in files:
            full = os.path.join(dirpath, name)
            with open(full, "rb") as f:
                out[os.path.relpath(full, path)] = f.read()
    return out


def test_manifest_lists_every_file_written(inputs, tmp_path, capsys):
    out = tmp_path / "out"
    assert _cli(capsys, inputs / "model.pb", out)[0] == 0
    manifest = json.loads((out / output_dir.MANIFEST_FILE).read_text())
    assert sorted(manifest["files"]) == ["model.pb", "svgd_report.json"]
    assert output_dir.foreign_entry(str(out)) is None


@pytest.mark.parametrize("intruder", ["NOTES.txt", "results/run1.csv", "results/",
                                      "svgd_report.json"])
def test_overwrite_refuses_an_out_dir_holding_anything_else(inputs, tmp_path, capsys,
                                                            intruder):
    """A previous output to which the user added a file, a folder, or edited the report:
    --overwrite refuses with one line naming it, and deletes nothing."""
    out = tmp_path / "out"
    assert _cli(capsys, inputs / "model.pb", out)[0] == 0
    target = out / intruder
    if intruder.endswith("/"):
        target.mkdir()
    else:
        target.parent.mkdir(exist_ok=True)
        target.write_text("the user's")
    before = _snapshot(out)
    rc, err = _cli(capsys, inputs / "model.pb", out, "--overwrite")
    assert rc == 2 and err.count("\n") == 1 and intruder.rstrip("/").split("/")[0] in err, err
    assert _snapshot(out) == before and target.exists()


def test_a_planted_report_does_not_make_a_directory_the_tools(inputs, tmp_path, capsys):
    """A directory (a home folder, say) holding a report the tool did not write, and no
    manifest: refused, nothing deleted."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "svgd_report.json").write_text("{}")
    (home / "thesis.tex").write_text("precious")
    for extra in ([], ["--overwrite"]):
        rc, err = _cli(capsys, inputs / "model.pb", home, *extra)
        assert rc == 2 and err.count("\n") == 1
    assert sorted(os.listdir(home)) == ["svgd_report.json", "thesis.tex"]


def test_recover_puts_back_an_output_a_killed_run_left_aside(tmp_path):
    """Killed between its two renames, a run leaves OUT_DIR missing and the complete old
    output in .NAME.svgd-old-PID-*: the next run moves it back first; once the new output is
    in place a leftover old copy is deleted; one holding a user's file is left alone."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "out"
    aside = tmp_path / f".out.svgd-old-{dead.pid}-ab12"
    aside.mkdir()
    (aside / "model.pb").write_bytes(b"old")
    output_dir.write_manifest(str(aside))
    output_dir.recover(str(out))
    assert (out / "model.pb").read_bytes() == b"old" and not aside.exists()
    aside.mkdir()
    (aside / "model.pb").write_bytes(b"older")
    output_dir.write_manifest(str(aside))
    output_dir.recover(str(out))
    assert not aside.exists() and (out / "model.pb").read_bytes() == b"old"
    aside.mkdir()
    (aside / "mine.txt").write_text("x")
    output_dir.recover(str(out))
    assert (aside / "mine.txt").exists()


_KILLER = """
import os, signal, sys
from svgd_rewrite import output_dir
point, log = int(sys.argv[1]), sys.argv[2]
calls = [0]

class Killing(output_dir.FileSystem):
    pass

for name in ("mkdtemp", "makedirs", "rename", "rmtree", "chmod", "write_text"):
    def wrapped(self, *args, _name=name, **kwargs):
        if calls[0] == point:
            os.kill(os.getpid(), signal.SIGKILL)
        calls[0] += 1
        with open(log, "a") as f:
            f.write(_name + "\\n")
        return getattr(output_dir.FileSystem, _name)(self, *args, **kwargs)
    setattr(Killing, name, wrapped)

output_dir._fs = Killing()
from svgd_rewrite.cli.main import main
sys.exit(main(sys.argv[3:]))
"""


def _complete(path) -> str | None:
    """``"old"`` or ``"new"`` (by the report's scale) when ``path`` holds a complete output:
    every file its manifest lists, with the listed hash, and nothing else; else None."""
    manifest = json.loads((path / output_dir.MANIFEST_FILE).read_text())
    if output_dir.foreign_entry(str(path)) is not None:
        return None
    if not all((path / rel).is_file() for rel in manifest["files"]):
        return None
    scale = json.loads((path / "svgd_report.json").read_text())["options"]["scale"]
    return {0.05: "old", 0.1: "new"}[scale]


def _run_killed(point: int, log, *args) -> int:
    proc = subprocess.run([sys.executable, "-c", _KILLER, str(point), str(log), *map(str, args),
                           "-q"], env=ENV, capture_output=True, text=True, timeout=300)
    return proc.returncode


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["model.pb", "saved"])
def test_a_kill_at_every_filesystem_call_leaves_a_complete_output(inputs, tmp_path, kind):
    """For each filesystem call of an --overwrite over a previous output: SIGKILL there, then
    OUT_DIR holds the complete old output, the complete new one, or (between the renames)
    nothing with the old one aside; the next run restores or finishes, succeeds, and deletes
    nothing of the user's."""
    model = inputs / kind
    reference = tmp_path / "reference"
    work = tmp_path / "work"
    work.mkdir()
    (work / "keep.txt").write_text("the user's")  # beside OUT_DIR: never touched
    out = work / "out"
    assert subprocess.run([sys.executable, "-m", "svgd_rewrite", str(model), str(reference / "old"),
                           "-q", "--scale", "0.05"], env=ENV).returncode == 0
    assert subprocess.run([sys.executable, "-m", "svgd_rewrite", str(model), str(reference / "new"),
                           "-q"], env=ENV).returncode == 0
    assert _complete(reference / "old") == "old" and _complete(reference / "new") == "new"
    log = tmp_path / "calls.log"
    shutil.copytree(reference / "old", out)
    assert _run_killed(-1, log, model, out, "--overwrite") == 0  # count the calls
    points = len(log.read_text().splitlines())
    assert points >= 5
    outcomes = []
    for point in range(points):
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(reference / "old", out)
        assert _run_killed(point, tmp_path / "ignored.log", model, out, "--overwrite") == \
            -signal.SIGKILL
        if out.exists():
            state = _complete(out)
            assert state is not None, f"point {point}: a partial OUT_DIR"
            outcomes.append(state)
        else:
            aside = [p for p in os.listdir(work) if ".svgd-old-" in p]
            assert len(aside) == 1 and _complete(work / aside[0]) == "old", f"point {point}"
            outcomes.append("aside")
        rc = subprocess.run([sys.executable, "-m", "svgd_rewrite", str(model), str(out), "-q",
                             "--overwrite"], env=ENV).returncode
        assert rc == 0, f"point {point}: the next run failed"
        assert _complete(out) == "new" and (work / "keep.txt").read_text() == "the user's"
        assert sorted(os.listdir(work)) == ["keep.txt", "out"], f"point {point}: leftovers"
    assert "old" in outcomes and "new" in outcomes


# --- recursive function libraries -----------------------------------------------------------

def _recursive_graph(cycle: list[str]) -> graph_pb2.GraphDef:
    """A GraphDef whose library functions call each other around ``cycle``."""
    gd = graph_pb2.GraphDef()
    gd.versions.producer = 1000
    for k, name in enumerate(cycle):
        f = gd.library.function.add()
        f.signature.name = name
        f.signature.input_arg.add(name="x", type=tf.float32.as_datatype_enum)
        f.signature.output_arg.add(name="y", type=tf.float32.as_datatype_enum)
        call = f.node_def.add(name="call", op="PartitionedCall", input=["x"])
        call.attr["f"].func.name = cycle[(k + 1) % len(cycle)]
        call.attr["Tin"].list.type.append(tf.float32.as_datatype_enum)
        call.attr["Tout"].list.type.append(tf.float32.as_datatype_enum)
        f.ret["y"] = "call:output:0"
    x = gd.node.add(name="x", op="Placeholder")
    x.attr["dtype"].type = tf.float32.as_datatype_enum
    top = gd.node.add(name="top", op="PartitionedCall", input=["x"])
    top.attr["f"].func.name = cycle[0]
    top.attr["Tin"].list.type.append(tf.float32.as_datatype_enum)
    top.attr["Tout"].list.type.append(tf.float32.as_datatype_enum)
    return gd


@pytest.mark.parametrize("cycle", [["f", "g"], pytest.param(["f"], marks=pytest.mark.slow),
                                   pytest.param(["a", "b", "c"], marks=pytest.mark.slow)])
def test_recursive_libraries_exit_2_before_tensorflow_imports_them(tmp_path, cycle):
    """Self and mutual recursion, as a .pb and inside a SavedModel: exit 2 with one line (a
    subprocess: TensorFlow's importer would crash the process)."""
    gd = _recursive_graph(cycle)
    (tmp_path / "g.pb").write_bytes(gd.SerializeToString())
    saved = tmp_path / "saved"
    build("mlp_l1", str(saved))
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((saved / "saved_model.pb").read_bytes())
    proto.meta_graphs[0].graph_def.library.function.extend(gd.library.function)
    (saved / "saved_model.pb").write_bytes(proto.SerializeToString())
    for model in (tmp_path / "g.pb", saved):
        proc = subprocess.run([sys.executable, "-m", "svgd_rewrite", str(model),
                               str(tmp_path / "out"), "-q"], env=ENV, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.count("\n") == 1 and "recursive function library" in proc.stderr
        assert not (tmp_path / "out").exists()


@settings(max_examples=200, deadline=None)
@given(st.integers(2, 9).flatmap(lambda n: st.tuples(
    st.just(n), st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=20),
    st.booleans())))
def test_library_cycle_finds_every_cycle_of_a_random_call_graph(case):
    """Random call graphs over n functions (calls by ``f`` attributes and by op type): the
    check reports a cycle exactly when networkx finds one."""
    import networkx as nx

    n, edges, by_op = case
    names = [f"fn{i}" for i in range(n)]
    gd = graph_pb2.GraphDef()
    for i, name in enumerate(names):
        f = gd.library.function.add()
        f.signature.name = name
        for k, (a, b) in enumerate(e for e in edges if e[0] == i):
            if by_op:
                f.node_def.add(name=f"n{k}", op=names[b])
            else:
                f.node_def.add(name=f"n{k}", op="StatefulPartitionedCall").attr[
                    "f"].func.name = names[b]
    graph = nx.DiGraph(list(edges))
    graph.add_nodes_from(range(n))
    found = library_cycle(gd.library)
    assert (found is not None) == (not nx.is_directed_acyclic_graph(graph))
    if found:
        assert found[0] == found[-1] and all(
            (names.index(a), names.index(b)) in set(edges) for a, b in zip(found, found[1:]))


# --- full disks, unreadable files, misuse ----------------------------------------------------

def _tmpfs(path) -> bool:
    path.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24k", "tmpfs", str(path)],
                          capture_output=True)
    return proc.returncode == 0


@pytest.mark.parametrize("writer", [["model"]] + [
    pytest.param(w, marks=pytest.mark.slow)
    for w in (["tensorboard"], ["svg"], ["html"], ["graphml"], ["dot"])])
def test_a_full_disk_in_every_writer_exits_2_and_leaves_nothing(inputs, tmp_path, writer):
    """A 24 KiB tmpfs as OUT_DIR's parent: whichever writer hits the full disk (the
    SavedModel, TensorBoard's event files, Graphviz, the HTML page, GraphML), exit 2 with one
    line and nothing left there."""
    disk = tmp_path / "disk"
    if not _tmpfs(disk):
        pytest.skip("needs root and tmpfs to fill a disk")
    try:
        args = [inputs / "saved", disk / "out"]
        if writer != ["model"]:
            args += ["--dry-run", "--export", writer[0]]
        proc = subprocess.run([sys.executable, "-m", "svgd_rewrite", *map(str, args), "-q"],
                              env=ENV, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert proc.stderr.count("\n") == 1, proc.stderr
        assert os.listdir(disk) == []
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


def test_an_unreadable_saved_model_exits_2(inputs, tmp_path, capsys, monkeypatch):
    import builtins

    saved = tmp_path / "saved"
    shutil.copytree(inputs / "saved", saved)
    target = str(saved / "saved_model.pb")
    real_open = builtins.open

    def guarded(path, *args, **kwargs):
        if str(path) == target:
            raise PermissionError(13, "Permission denied")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded)
    rc, err = _cli(capsys, saved, tmp_path / "out")
    monkeypatch.setattr(builtins, "open", real_open)
    assert rc == 2 and err.count("\n") == 1 and "Permission denied" in err, err


@pytest.mark.parametrize("value", ["1_0", "١", "inf", "nan", "0x10", " "])
def test_numbers_in_the_command_line_are_plain_decimals(inputs, tmp_path, capsys, value):
    rc, err = _cli(capsys, inputs / "model.pb", tmp_path / "out", "--scale", value)
    assert rc == 2 and err.count("\n") == 1 and not (tmp_path / "out").exists()


def test_library_misuse_raises_one_line_errors():
    step = svgd_rewrite.rewrite(make_module("mlp_l1").train)
    with pytest.raises(svgd_rewrite.StepCallError, match="takes"):
        step(tf.zeros([4, 7]), tf.zeros([4], tf.int32))
    with pytest.raises(svgd_rewrite.StepCallError) as info:
        step(tf.zeros([4, 6]))
    assert "\n" not in str(info.value)
    with pytest.raises(svgd_rewrite.InvalidOptionError, match="foo"):
        svgd_rewrite.rewrite(make_module("mlp_l1").train, foo=1)
    for scale in (1e-46, 1e-39):  # 0 or subnormal in float32
        with pytest.raises(svgd_rewrite.InvalidOptionError, match="smallest normal"):
            svgd_rewrite.rewrite(make_module("mlp_l1").train, scale=scale)


def test_an_overflowing_first_batch_gives_a_bounded_update():
    """A first batch whose loss is ~1e42 (targets of 1e21): g² overflows float32, r stays 0,
    and this step's f = s·rsqrt(∞) = 0, so the weights do not move — instead of an update of
    s/√ε·g = 100·g ≈ 1e23. The next ordinary batch trains normally."""
    rng = np.random.default_rng(0)
    w1 = tf.Variable(rng.normal(size=(4, 8)).astype(np.float32) * 0.5)
    w2 = tf.Variable(rng.normal(size=(8, 1)).astype(np.float32) * 0.5)

    @tf.function(input_signature=[tf.TensorSpec((None, 4)), tf.TensorSpec((None, 1))])
    def sgd_step(x, y):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(tf.matmul(tf.tanh(tf.matmul(x, w1)), w2) - y))
        g1, g2 = tape.gradient(loss, [w1, w2])
        w1.assign_sub(0.05 * g1)
        w2.assign_sub(0.05 * g2)
        return loss

    step = svgd_rewrite.rewrite(sgd_step)
    before = [w1.numpy(), w2.numpy()]
    x = rng.normal(size=(16, 4)).astype(np.float32)
    step(x, np.full((16, 1), 1e21, np.float32))
    assert all(np.all(a.numpy() == 0) for a in step.accumulators)
    np.testing.assert_array_equal(w1.numpy(), before[0])
    np.testing.assert_array_equal(w2.numpy(), before[1])
    y = np.sum(x, axis=1, keepdims=True).astype(np.float32) * 0.3
    first = float(step(x, y))
    for _ in range(10):
        last = float(step(x, y))
    assert np.isfinite(last) and last < first
    assert all(np.all(np.isfinite(a.numpy())) and np.any(a.numpy() > 0)
               for a in step.accumulators)
