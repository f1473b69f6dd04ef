"""tf_keras models (``TF_USE_LEGACY_KERAS=1``) through ``svgd_rewrite.keras``, in subprocesses
(tests/scripts/tf_keras_fit.py): the same oracle and lifecycle checks as Keras 3."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "tests", "scripts", "tf_keras_fit.py")


def _run(mode: str, directory) -> dict:
    pytest.importorskip("tf_keras")
    proc = subprocess.run([sys.executable, SCRIPT, mode, str(directory)], capture_output=True,
                          text=True, timeout=600, env={**os.environ, "TF_USE_LEGACY_KERAS": "1",
                                                       "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tf_keras")
    return directory, _run("train", directory)


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "momentum"])
def test_fit_second_fit_and_train_on_batch_match_the_oracle(trained, optimizer):
    row = trained[1][optimizer]
    for stage in ("fit", "second_fit", "train_on_batch"):
        assert row[stage] <= 1e-5, (stage, row)
    assert row["accumulators"] == ["weights.0.kernel", "weights.2.kernel"]
    assert row["traced_steps"] == 1  # train_on_batch reuses fit's step


def test_state_warning_only_where_the_state_changes_the_update(trained):
    """tf_keras's SGD keeps an ``m`` slot even at momentum 0, where it is overwritten before
    the update reads it: no warning there; at momentum 0.9 and for Adam, one."""
    state = {name: [w for w in trained[1][name]["warnings"] if "optimizer with state" in w]
             for name in ("sgd", "momentum", "adam")}
    assert state["sgd"] == []
    assert len(state["momentum"]) == 1 and "SGD/m/conv/kernel" in state["momentum"][0]
    assert len(state["adam"]) == 1 and "Adam/v/" in state["adam"][0]


def test_virtual_gradients_callback(trained):
    row = trained[1]["callback"]
    assert row["fit"] <= 1e-5 and row["sites"] == 2 and not row["enabled_after"]


def test_mirrored_strategy_fit(trained):
    row = trained[1]["mirrored"]
    assert row["fit"] <= 1e-5 and row["replicas"] == [2]


def test_save_weights_resume_in_a_fresh_process(trained):
    """A TF-format ``save_weights`` checkpoint carries the accumulators: a new process that
    enables before or after ``load_weights`` continues the oracle (r lost would be far off)."""
    resumed = _run("resume", trained[0])
    for order, row in resumed.items():
        assert row["resumed"] <= 1e-5 and row["if_r_were_lost"] > 1e-2, (order, row)
        assert row["accumulators"] == 2 and row["warnings"] == [] and row["notes"] == []
