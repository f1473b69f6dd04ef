"""tf.distribute (each case in its own processes: logical devices and clusters are fixed at
start-up): MirroredStrategy on 2 logical CPUs and MultiWorkerMirroredStrategy with 2 worker
processes train like the independent single-device oracle on the global batch; unsupported
strategies and layouts are refused with one line."""
import json
import os
import socket
import subprocess
import sys

import pytest

SCRIPTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scripts")
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}


def _run(script: str, *args: str, timeout: int = 300) -> str:
    proc = subprocess.run([sys.executable, os.path.join(SCRIPTS, script), *args],
                          capture_output=True, text=True, timeout=timeout, env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("replicas", [2, 3])
def test_mirrored_strategy_matches_the_oracle_on_the_global_batch(replicas):
    out = json.loads(_run("distributed_mirrored.py", str(replicas)).strip().splitlines()[-1])
    # One logical site (one report row, one mirrored accumulator) per forward op.
    assert out["report_sites"] == [["Conv2D", "k0", replicas], ["Conv2D_1", "k1", replicas],
                                   ["Conv2D_2", "k2", replicas], ["MatMul", "w", replicas]]
    assert out["accumulator_types"] == ["MirroredVariable"]
    assert len(out["svgd_errors"]) == 3 and max(out["svgd_errors"]) <= 1e-5, out
    assert out["replicas_identical"] is True
    assert len(out["adam_errors"]) == 3 and max(out["adam_errors"]) <= 1e-5, out
    assert max(out["identity_errors"]) <= 1e-7, out
    # A checkpoint written under the strategy continues on one device like the
    # uninterrupted distributed run.
    assert out["restored_accumulator_types"] == ["ResourceVariable"]
    assert out["restore_error"] <= 1e-5, out


@pytest.mark.slow
def test_multi_worker_mirrored_strategy_matches_the_oracle():
    cluster = {"worker": [f"localhost:{_free_port()}", f"localhost:{_free_port()}"]}
    procs = []
    for index in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        procs.append(subprocess.Popen(
            [sys.executable, os.path.join(SCRIPTS, "distributed_worker.py")],
            env={**ENV, "TF_CONFIG": tf_config}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True))
    results = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=300)
            assert p.returncode == 0, err[-3000:]
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert sorted(r["task"] for r in results) == [0, 1]
    for r in results:
        assert r["replicas"] == 2 and r["sites"] == 4
        assert len(r["errors"]) == 3 and max(r["errors"]) <= 1e-5, r


@pytest.mark.slow
def test_parameter_server_strategy_is_refused():
    out = _run("distributed_ps.py")
    line = [x for x in out.splitlines() if x.startswith(("refused:", "rewritten"))][-1]
    assert line.startswith("refused:") and "ParameterServerStrategy" in line
    assert "MirroredStrategy or MultiWorkerMirroredStrategy" in line


@pytest.mark.slow
def test_keras_fit_under_mirrored_strategy_matches_the_keras_oracle():
    out = json.loads(_run("distributed_keras_fit.py").strip().splitlines()[-1])
    for case in ("spe1", "spe2"):  # steps_per_execution 1 and 2
        r = out[case]
        assert r["weights_error"] <= 1e-5, out
        assert [replicas for _, replicas in r["sites"]] == [2, 2]
        assert r["accumulators"] == ["MirroredVariable"] and r["finite_loss"]
    short = out["short_last_batch"]  # 72 samples, batch 16: a second trace for the last 8
    assert short["traced_steps"] == 2 and short["accumulators"] == 2, out
    assert short["weights_error"] <= 1e-5, out


@pytest.mark.slow
def test_replica_function_and_unsupported_strategies_are_refused():
    """A replica function traced on its own (to be called under strategy.run) would share one
    accumulator between replicas, and Keras fit under CentralStorageStrategy is not
    supported: both refuse with one line naming the supported way instead of training wrong."""
    out = _run("distributed_refused.py")
    assert out.count("refused:") == 2 and out.count("not supported") == 2
    assert "rewrite the tf.function that calls strategy.run" in out
    assert "supported: MirroredStrategy" in out


@pytest.mark.slow
def test_readme_distributed_example_trains():
    proc = subprocess.run([sys.executable, "-m", "fixtures.distributed_example"],
                          capture_output=True, text=True, timeout=300, env=ENV,
                          cwd=os.path.dirname(os.path.dirname(SCRIPTS)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "3 site(s) transformed" in proc.stdout  # Conv2D, Dense, Dense: one site each
    losses = [float(line.rsplit(" ", 1)[1]) for line in proc.stdout.splitlines()
              if line.startswith("epoch ")]
    assert len(losses) == 3 and losses[2] < 0.5 * losses[0], losses
