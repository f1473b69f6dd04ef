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
point, log, signum = int(sys.argv[1]), sys.argv[2], getattr(signal, sys.argv[3])
calls = [0]

class Killing(output_dir.FileSystem):
    pass

for name in [n for n in vars(output_dir.FileSystem) if not n.startswith("_")]:
    def wrapped(self, *args, _name=name, **kwargs):
        calls[0] += 1
        if calls[0] - 1 == point:  # counted first: a handler may raise here
            os.kill(os.getpid(), signum)
        with open(log, "a") as f:
            f.write(_name + "\\n")
        return getattr(output_dir.FileSystem, _name)(self, *args, **kwargs)
    setattr(Killing, name, wrapped)

output_dir._fs = Killing()
from svgd_rewrite.cli.main import main
sys.exit(main(sys.argv[4:]))
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


def _run_signalled(point: int, log, signame: str, *args) -> subprocess.CompletedProcess:
    """The command line, sent ``signame`` by itself before its filesystem call ``point``."""
    return subprocess.run([sys.executable, "-c", _KILLER, str(point), str(log), signame,
                           *map(str, args), "-q"], env=ENV, capture_output=True, text=True,
                          timeout=300)


def _run_killed(point: int, log, *args) -> int:
    return _run_signalled(point, log, "SIGKILL", *args).returncode


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


@pytest.mark.slow
def test_a_sigterm_at_every_filesystem_call_ends_the_run_cleanly(inputs, tmp_path):
    """SIGTERM at each filesystem call of an --overwrite: the run ends like a Ctrl-C
    (exit 128+N, one line saying what OUT_DIR holds), OUT_DIR holds the complete old or new
    output as that line says, and nothing is left beside it (no staging, no aside)."""
    signame = "SIGTERM"
    model = inputs / "model.pb"
    reference = tmp_path / "reference"
    work = tmp_path / "work"
    work.mkdir()
    out = work / "out"
    assert subprocess.run([sys.executable, "-m", "svgd_rewrite", str(model), str(reference / "old"),
                           "-q", "--scale", "0.05"], env=ENV).returncode == 0
    log = tmp_path / "calls.log"
    shutil.copytree(reference / "old", out)
    assert _run_signalled(-1, log, signame, model, out, "--overwrite").returncode == 0
    points = len(log.read_text().splitlines())
    outcomes = []
    for point in range(points):
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(reference / "old", out)
        proc = _run_signalled(point, tmp_path / "ignored.log", signame, model, out,
                              "--overwrite")
        assert proc.returncode == 128 + getattr(signal, signame), (point, proc.stderr)
        assert proc.stderr.count("\n") == 1 and signame in proc.stderr, proc.stderr
        state = _complete(out)
        assert state is not None and sorted(os.listdir(work)) == ["out"], f"point {point}"
        assert output_dir.STAGING_MARKER not in os.listdir(out)
        said_new = "holds the complete new output" in proc.stderr
        assert said_new == (state == "new"), (point, state, proc.stderr)
        assert said_new or "nothing was written" in proc.stderr
        outcomes.append(state)
    assert "old" in outcomes and "new" in outcomes


# --- issue #33: every state a crash, a signal or a user leaves -------------------------------

def _dead_pid() -> int:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    return dead.pid


def _produce(out, data: str, overwrite: bool = False) -> None:
    """An output of the tool written through staged_output (no TensorFlow)."""
    with output_dir.staged_output(str(out), [], overwrite) as tmp:
        with open(os.path.join(tmp, "model.pb"), "w") as f:
            f.write(data)
        os.mkdir(os.path.join(tmp, "variables"))
        with open(os.path.join(tmp, "variables", "v.data"), "w") as f:
            f.write(data * 3)


@pytest.mark.parametrize("aside_kind", ["tool", "tool+note", "users"])
@pytest.mark.parametrize("out_state", ["missing", "empty", "users", "new_output"])
def test_an_aside_is_restored_or_kept_never_deleted(tmp_path, aside_kind, out_state):
    """#33.1: what a kill between the two renames leaves (the old output in
    .out.svgd-old-PID-*), then whatever the user did with OUT_DIR: the aside comes back into a
    missing or empty OUT_DIR, stays when OUT_DIR holds the user's files, and is deleted only
    when it is provably the tool's and a complete new output is in OUT_DIR. A look-alike that
    is not the tool's output is never touched."""
    out = tmp_path / "out"
    aside = tmp_path / f".out.svgd-old-{_dead_pid()}-deadbeef"
    _produce(tmp_path / "old", "old")
    if aside_kind == "users":
        (tmp_path / "old" / output_dir.MANIFEST_FILE).unlink()
    os.rename(tmp_path / "old", aside)
    if aside_kind == "tool+note":
        (aside / "note.txt").write_text("added by hand")
    kept = _snapshot(aside)
    if out_state == "empty":
        out.mkdir()
    elif out_state == "users":
        out.mkdir()
        (out / "note.txt").write_text("notes")
    elif out_state == "new_output":
        _produce(tmp_path / "new", "new")
        os.rename(tmp_path / "new", out)
    before = _snapshot(out) if out.exists() else None
    output_dir.recover(str(out))
    if aside_kind != "tool" or out_state == "users":
        assert _snapshot(aside) == kept and (_snapshot(out) if out.exists() else None) == before
    elif out_state in ("missing", "empty"):
        assert not aside.exists() and _snapshot(out) == kept
    else:
        assert not aside.exists() and (out / "model.pb").read_text() == "new"


def test_an_aside_survives_a_run_into_a_recreated_out_dir(inputs, tmp_path, capsys):
    """#33.1 through the command line: a previous output set aside, then `mkdir out` with the
    user's notes: exit 2, nothing lost; an empty `out`: the old output comes back into it, and
    the run without --overwrite refuses instead of replacing it; --overwrite then replaces it."""
    out = tmp_path / "out"
    assert _cli(capsys, inputs / "model.pb", out, "--scale", "0.05")[0] == 0
    old = _snapshot(out)
    aside = tmp_path / ".out.svgd-old-3999999-deadbeef"
    os.rename(out, aside)
    out.mkdir()
    (out / "note.txt").write_text("notes")
    for extra in ([], ["--overwrite"]):
        rc, err = _cli(capsys, inputs / "model.pb", out, *extra)
        assert rc == 2 and err.count("\n") == 1, err
        assert _snapshot(aside) == old and _snapshot(out) == {"note.txt": b"notes"}
    (out / "note.txt").unlink()
    rc, err = _cli(capsys, inputs / "model.pb", out)
    assert rc == 2 and "not empty" in err and _snapshot(out) == old and not aside.exists()
    assert _cli(capsys, inputs / "model.pb", out, "--overwrite")[0] == 0
    assert _complete(out) == "new" and sorted(os.listdir(tmp_path)) == ["out"]


def test_a_staging_look_alike_is_never_touched(inputs, tmp_path, capsys):
    """#33.2: `.out.svgd-tmp-PID-thesis` of a dead PID holding the user's file: the run
    succeeds and the folder stays; so do a forged marker (another name's token, another pid,
    not JSON, a FIFO), a marker in a symlinked folder and a huge PID; an empty look-alike is
    removed (rmdir deletes nothing); the tool's own dead staging (its marker) is removed."""
    pid = _dead_pid()

    def folder(name, marker=None):
        path = tmp_path / name
        path.mkdir()
        (path / "thesis.tex").write_text("precious")
        if isinstance(marker, dict):
            (path / output_dir.STAGING_MARKER).write_text(json.dumps(marker))
        elif marker == "fifo":
            os.mkfifo(path / output_dir.STAGING_MARKER)
        elif marker is not None:
            (path / output_dir.STAGING_MARKER).write_text(marker)
        return path

    kept = [folder(".out.svgd-tmp-3999999-thesis"),
            folder(f".out.svgd-tmp-{pid}-aaa", {"tool": "svgd-rewrite", "pid": pid,
                                                "token": "bbb"}),
            folder(f".out.svgd-tmp-{pid}-ccc", {"tool": "svgd-rewrite", "pid": pid + 1,
                                                "token": "ccc"}),
            folder(f".out.svgd-tmp-{pid}-ddd", "not json"),
            folder(f".out.svgd-tmp-{pid}-eee", "fifo"),
            folder(".out.svgd-tmp-99999999999-x"),
            folder(".out.svgd-old-99999999999-x")]
    target = folder("elsewhere", {"tool": "svgd-rewrite", "pid": pid, "token": "fff"})
    (tmp_path / f".out.svgd-tmp-{pid}-fff").symlink_to(target)
    empty = tmp_path / f".out.svgd-tmp-{pid}-empty"
    empty.mkdir()
    ours = folder(f".out.svgd-tmp-{pid}-ggg", {"tool": "svgd-rewrite", "pid": pid,
                                               "token": "ggg"})
    rc, err = _cli(capsys, inputs / "model.pb", tmp_path / "out")
    assert rc == 0, err
    for path in kept + [target]:
        assert (path / "thesis.tex").read_text() == "precious", path
    assert not empty.exists() and not ours.exists()


_SPECIAL = """
import hashlib, json, os, sys
from svgd_rewrite import output_dir
out, listed = sys.argv[1], sys.argv[2]
os.mkdir(out)
os.mkfifo(os.path.join(out, output_dir.MANIFEST_FILE))
refused = []
for overwrite in (False, True):
    try:
        output_dir.check_output_dir(out, [], overwrite)
    except output_dir.OutputError as e:
        refused.append(str(e))
os.mkdir(listed)
with open(os.path.join(listed, output_dir.MANIFEST_FILE), "w") as f:
    json.dump({"tool": "svgd-rewrite", "format": 1, "directories": [],
               "files": {"pipe": {"size": 0, "sha256": hashlib.sha256(b"").hexdigest()}}}, f)
os.mkfifo(os.path.join(listed, "pipe"))
try:
    output_dir.check_output_dir(listed, [], True)
except output_dir.OutputError as e:
    refused.append(str(e))
print(json.dumps(refused))
"""


@pytest.mark.slow
def test_special_files_are_refused_without_being_opened(tmp_path):
    """#33.3: a FIFO named svgd_manifest.json (with and without --overwrite), a FIFO listed
    in a manifest, `show pipe.keras`: refused at once with one line, nothing opened for
    reading (subprocesses with a timeout: opening a FIFO blocks forever, and a test's alarm
    does not reach a thread blocked in open())."""
    proc = subprocess.run([sys.executable, "-c", _SPECIAL, str(tmp_path / "out"),
                           str(tmp_path / "listed")], env=ENV, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    refused = json.loads(proc.stdout)
    assert len(refused) == 3 and all("\n" not in e for e in refused), refused
    assert "not empty" in refused[0] and output_dir.MANIFEST_FILE in refused[1]
    assert "'pipe'" in refused[2]
    assert sorted(os.listdir(tmp_path / "listed")) == ["pipe", output_dir.MANIFEST_FILE]
    os.mkfifo(tmp_path / "pipe.keras")
    proc = subprocess.run([sys.executable, "-m", "svgd_rewrite", "show",
                           str(tmp_path / "pipe.keras")], env=ENV, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "not a regular file" in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.count("\n") == 1, proc.stderr


def test_a_manifest_linked_to_dev_zero_is_not_read(tmp_path):
    """#33.3: `ln -s /dev/zero out/svgd_manifest.json`: refused at once, under a memory limit
    that reading it would exceed (a subprocess: the old code read until memory ran out)."""
    out = tmp_path / "out"
    out.mkdir()
    (out / output_dir.MANIFEST_FILE).symlink_to("/dev/zero")
    script = ("import resource, sys\n"
              "resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))\n"
              "from svgd_rewrite import output_dir\n"
              "try:\n"
              "    output_dir.check_output_dir(sys.argv[1], [], True)\n"
              "except output_dir.OutputError as e:\n"
              "    print(e)\n")
    proc = subprocess.run([sys.executable, "-c", script, str(out)], env=ENV,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and output_dir.MANIFEST_FILE in proc.stdout, proc.stderr[-500:]


@pytest.mark.parametrize("manifest", [
    {"files": {"model.pb": "a string"}}, {"files": {"model.pb": ["a", "list"]}},
    {"files": {}, "directories": 5}, {"files": {}, "directories": [5]},
    {"files": {"model.pb": {"size": "1", "sha256": "x"}}}, {"files": []}, "deep", "huge",
    "not utf-8"])
def test_every_bad_manifest_is_exit_2(inputs, tmp_path, capsys, manifest):
    """#33.4: a record that is a string or a list, "directories": 5, 200,000-deep nested JSON
    (with and without --overwrite), a manifest over 64 MiB, bytes that are not UTF-8: exit 2
    with one line (was 1: AttributeError, TypeError, RecursionError), nothing deleted."""
    out = tmp_path / "out"
    out.mkdir()
    if not isinstance(manifest, dict) or manifest["files"]:  # else only the manifest
        (out / "model.pb").write_bytes(b"the user's")
    path = out / output_dir.MANIFEST_FILE
    if manifest == "deep":
        path.write_text('{"tool": "svgd-rewrite", "files": ' + "[" * 200_000 + "]" * 200_000
                        + "}")
    elif manifest == "huge":
        with open(path, "wb") as f:
            f.truncate(output_dir.MANIFEST_LIMIT + 1)
    elif manifest == "not utf-8":
        path.write_bytes(b'{"tool": "svgd-rewrite", "files": {"\xff": 1}}')
    else:
        path.write_text(json.dumps({"tool": "svgd-rewrite", "format": 1, **manifest}))
    before = _snapshot(out)
    for extra in (["--overwrite"], []):
        rc, err = _cli(capsys, inputs / "model.pb", out, *extra)
        assert rc == 2 and err.count("\n") == 1, err
    assert _snapshot(out) == before


def test_a_sibling_with_a_pid_no_process_can_have_is_not_an_error(inputs, tmp_path, capsys):
    """#33.4: `.out.svgd-tmp-99999999999-x` beside OUT_DIR (OverflowError in os.kill on every
    run into `out`): a dead process's look-alike, left alone; the run succeeds."""
    odd = tmp_path / ".out.svgd-tmp-99999999999-x"
    odd.mkdir()
    (odd / "data.csv").write_text("mine")
    rc, err = _cli(capsys, inputs / "model.pb", tmp_path / "out")
    assert rc == 0, err
    assert (odd / "data.csv").read_text() == "mine"


def test_ctrl_c_between_the_two_renames_finishes_the_commit(inputs, tmp_path, capsys,
                                                           monkeypatch):
    """#33.5: Ctrl-C while OUT_DIR is missing (its previous output moved aside, the new one
    not yet renamed in): the commit finishes first, exit 130, and the line says OUT_DIR holds
    the new output (it said "nothing was written" with OUT_DIR missing)."""
    out = tmp_path / "out"
    assert _cli(capsys, inputs / "model.pb", out, "--scale", "0.05")[0] == 0

    class CtrlC(output_dir.FileSystem):
        def rename(self, src, dst):
            if ".svgd-tmp-" in src and not os.path.lexists(dst):
                os.kill(os.getpid(), signal.SIGINT)
            super().rename(src, dst)

    monkeypatch.setattr(output_dir, "_fs", CtrlC())
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # even if ignored
    try:
        rc, err = _cli(capsys, inputs / "model.pb", out, "--overwrite")
    finally:
        signal.signal(signal.SIGINT, previous)
    assert rc == 130 and err.count("\n") == 1 and "interrupted" in err, err
    assert "holds the complete new output" in err, err
    assert _complete(out) == "new" and sorted(os.listdir(tmp_path)) == ["out"]


_SIGNAL_SWEEP = """
import json, os, shutil, signal, sys
from svgd_rewrite import output_dir
from svgd_rewrite.cli.main import _stopping_on_signals
work, signum = sys.argv[1], getattr(signal, sys.argv[2])
signal.signal(signal.SIGINT, signal.default_int_handler)
for default in (signal.SIGTERM, signal.SIGHUP):  # as in a shell (not ignored, e.g. by nohup)
    signal.signal(default, signal.SIG_DFL)
out = os.path.join(work, "out")

def produce(data, point):
    calls = [0]
    class Hook(output_dir.FileSystem):
        pass
    for name in [n for n in vars(output_dir.FileSystem) if not n.startswith("_")]:
        def wrapped(self, *args, _name=name, **kwargs):
            calls[0] += 1
            if calls[0] - 1 == point:  # counted first: a handler may raise here
                os.kill(os.getpid(), signum)
            return getattr(output_dir.FileSystem, _name)(self, *args, **kwargs)
        setattr(Hook, name, wrapped)
    output_dir._fs = Hook()
    try:
        with _stopping_on_signals():
            with output_dir.staged_output(out, [], True) as tmp:
                for name in ("model.pb", "svgd_report.json"):
                    with open(os.path.join(tmp, name), "w") as f:
                        f.write(data)
                os.mkdir(os.path.join(tmp, "variables"))
                with open(os.path.join(tmp, "variables", "v"), "w") as f:
                    f.write(data)
        return None
    except KeyboardInterrupt as e:
        return getattr(e, "output_state", "") or "(no state)"
    finally:
        output_dir._fs = output_dir.FileSystem()

results, point = [], 0
while True:
    shutil.rmtree(out, ignore_errors=True)
    produce("old", -1)
    state = produce("new", point)
    with open(os.path.join(out, "model.pb")) as f:
        content = f.read()
    results.append({"point": point, "state": state, "content": content,
                    "beside": sorted(os.listdir(work)), "inside": sorted(os.listdir(out)),
                    "foreign": output_dir.foreign_entry(out)})
    if state is None:
        break
    point += 1
print(json.dumps(results))
"""


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP", "SIGINT"])
def test_a_signal_at_every_filesystem_call_ends_between_consistent_states(tmp_path, signame):
    """#33.5 at the library level (a subprocess without TensorFlow: fast): SIGTERM, SIGHUP
    or SIGINT at each filesystem call of an overwrite, with the command line's handlers.
    Every point ends the same clean way: the interrupt carries one line saying what OUT_DIR
    holds, OUT_DIR holds the complete old or new output accordingly, and nothing is left
    beside it or inside it (no staging, no aside, no marker)."""
    proc = subprocess.run([sys.executable, "-c", _SIGNAL_SWEEP, str(tmp_path), signame],
                          env=ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(proc.stdout)
    assert len(results) >= 9
    for r in results[:-1]:
        assert r["beside"] == ["out"] and r["foreign"] is None, r
        assert r["inside"] == ["model.pb", output_dir.MANIFEST_FILE, "svgd_report.json",
                               "variables"], r
        assert r["state"].count("\n") == 0
        if r["content"] == "new":
            assert "holds the complete new output" in r["state"], r
        else:
            assert r["content"] == "old" and "nothing was written" in r["state"], r
    assert {r["content"] for r in results[:-1]} == {"old", "new"}


_KILL_ONE = """
import os, signal, sys
from svgd_rewrite import output_dir
out, point, data = sys.argv[1], int(sys.argv[2]), sys.argv[3]
calls = [0]
class Hook(output_dir.FileSystem):
    pass
for name in [n for n in vars(output_dir.FileSystem) if not n.startswith("_")]:
    def wrapped(self, *args, _name=name, **kwargs):
        if calls[0] == point:
            os.kill(os.getpid(), signal.SIGKILL)
        calls[0] += 1
        return getattr(output_dir.FileSystem, _name)(self, *args, **kwargs)
    setattr(Hook, name, wrapped)
output_dir._fs = Hook()
with output_dir.staged_output(out, [], True) as tmp:
    with open(os.path.join(tmp, "model.pb"), "w") as f:
        f.write(data)
print(calls[0])
"""


@pytest.mark.parametrize("then", ["rerun", "empty_out", "users_out"])
def test_a_sigkill_at_every_call_then_the_user_and_the_next_run(tmp_path, then):
    """SIGKILL at each filesystem call of an overwrite (library level, no TensorFlow), then
    (where OUT_DIR went missing) the user re-creates it empty or with a note; the next run:
    ends with the complete new output (rerun, empty OUT_DIR: the old one came back first and
    was replaced) or refuses with nothing lost (the user's OUT_DIR: the old output stays
    aside, intact); never a leftover staging directory."""
    out = tmp_path / "out"

    def kill_at(point):
        return subprocess.run([sys.executable, "-c", _KILL_ONE, str(out), str(point), "new"],
                              env=ENV, capture_output=True, text=True, timeout=60)

    _produce(out, "old")
    points = int(kill_at(-1).stdout)
    for point in range(points):
        shutil.rmtree(tmp_path)
        tmp_path.mkdir()
        _produce(out, "old")
        old = _snapshot(out)
        assert kill_at(point).returncode == -signal.SIGKILL
        asides = [p for p in os.listdir(tmp_path) if ".svgd-old-" in p]
        if not out.exists():
            assert len(asides) == 1 and _snapshot(tmp_path / asides[0]) == old, point
            if then == "empty_out":
                out.mkdir()
                with pytest.raises(output_dir.OutputError, match="not empty"):
                    _produce(out, "newer")  # the old output came back: not replaced
                assert _snapshot(out) == old and not (tmp_path / asides[0]).exists()
            elif then == "users_out":
                out.mkdir()
                (out / "note.txt").write_text("notes")
        if then == "users_out" and (out / "note.txt").exists():
            with pytest.raises(output_dir.OutputError):
                _produce(out, "newer", overwrite=True)
            assert _snapshot(tmp_path / asides[0]) == old
            assert sorted(os.listdir(tmp_path)) == sorted(["out"] + asides), point
            continue
        _produce(out, "newer", overwrite=True)
        assert (out / "model.pb").read_text() == "newer"
        assert output_dir.foreign_entry(str(out)) is None
        assert sorted(os.listdir(tmp_path)) == ["out"], (point, os.listdir(tmp_path))


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


@pytest.mark.slow
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
