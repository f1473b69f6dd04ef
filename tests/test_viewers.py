"""The viewers the README names: TensorBoard reads the export (its own event reader, and its
server), and long runs report their stages (log records; stage lines on a terminal)."""
from __future__ import annotations

import json
import logging
import os
import pty
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import tensorflow as tf

import svgd_rewrite
from helpers import STAGE_LINE, make_module

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tensorboard_export(tmp_path_factory):
    out = tmp_path_factory.mktemp("tb")
    step = svgd_rewrite.rewrite(make_module("mlp_l1").train)
    svgd_rewrite.export(step, str(out), ["tensorboard"])
    return out / "graphs" / "tensorboard", step


def test_tensorboard_reads_both_runs_graphs(tensorboard_export):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logdir, step = tensorboard_export
    graphs = {}
    for run in ("original", "rewritten"):
        acc = EventAccumulator(str(logdir / run))
        acc.Reload()
        graphs[run] = acc.Graph()
    names = {run: {n.name for n in g.node} for run, g in graphs.items()}
    assert any(n.startswith("svgd_rewrite/site_") for n in names["rewritten"])
    assert not any(n.startswith("svgd_rewrite/") for n in names["original"])
    assert len(names["rewritten"]) == len(step.graph_def.node)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_tensorboard_server_serves_both_runs(tensorboard_export):
    pytest.importorskip("tensorboard")
    logdir, _ = tensorboard_export
    port = _free_port()
    import shutil

    command = shutil.which("tensorboard")  # the README's command (the viz extra installs it)
    command = [command] if command else [sys.executable, "-m", "tensorboard.main"]
    proc = subprocess.Popen(command + ["--logdir", str(logdir), "--host", "127.0.0.1",
                                       "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        runs, deadline = None, time.time() + 90
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/data/runs", timeout=5) as r:
                    runs = json.loads(r.read())
                if sorted(runs) == ["original", "rewritten"]:
                    break
            except OSError:
                pass
            time.sleep(1)
        assert sorted(runs or []) == ["original", "rewritten"], runs
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_library_logs_each_stage(caplog):
    with caplog.at_level(logging.INFO, logger="svgd_rewrite.progress"):
        svgd_rewrite.rewrite(make_module("mlp_l1").train)
    stages = [r.stage for r in caplog.records if r.name == "svgd_rewrite.progress"]
    assert stages == ["load", "analyze", "plan", "surgery", "emit"]
    assert all(r.elapsed >= 0 for r in caplog.records if hasattr(r, "elapsed"))


def _run_in_pty(args) -> tuple[int, str]:
    master, slave = pty.openpty()
    env = {**os.environ, "PYTHONPATH": ROOT}
    proc = subprocess.Popen([sys.executable, "-m", "svgd_rewrite", *map(str, args)],
                            stdout=subprocess.DEVNULL, stderr=slave, env=env, cwd=ROOT)
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    return proc.wait(timeout=600), b"".join(chunks).decode(errors="replace")


@pytest.mark.slow
def test_resnet56_rewrite_shows_stages_on_a_terminal(tmp_path):
    from fixtures import keras_models

    import keras

    model = keras_models.resnet(56)
    module = tf.Module()
    module.model, module.optimizer = model, keras.optimizers.SGD(0.01)
    module.train = keras_models.train_step(model, module.optimizer, l1=0)
    module.train.get_concrete_function()
    tf.saved_model.save(module, str(tmp_path / "resnet56"),
                        options=tf.saved_model.SaveOptions(experimental_custom_gradients=False))
    rc, err = _run_in_pty([tmp_path / "resnet56", tmp_path / "out"])
    assert rc == 0, err
    stages = [m.group(1) for m in map(STAGE_LINE.match, err.splitlines()) if m]
    assert stages[:1] == ["import"] and {"load", "analyze", "surgery", "write"} <= set(stages)
    rc, err = _run_in_pty([tmp_path / "resnet56", tmp_path / "out2", "-q"])
    assert rc == 0 and err.strip() == "", err
