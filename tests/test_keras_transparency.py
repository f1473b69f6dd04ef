"""Transparency: Keras's own tests, with every compiled model enabled with the identity
transform, fail exactly the tests that fail without it.

The test files ship in the installed ``keras`` package (callbacks, models, saving). They run
twice, side by side in subprocesses: plain, and with ``keras_suite/identity_plugin.py``, which
enables every model Keras's tests compile. ``remote_monitor_test.py`` (it imports Keras's
repository ``conftest``) and ``orbax_checkpoint_test.py`` (orbax is not installed) are left
out.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import keras
import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
KERAS_SRC = Path(keras.__file__).resolve().parent / "src"
LEFT_OUT = ("remote_monitor_test.py", "orbax_checkpoint_test.py")


def keras_test_files() -> list[str]:
    files = sorted((KERAS_SRC / "callbacks").glob("*_test.py")) + [
        KERAS_SRC / "models" / "model_test.py", KERAS_SRC / "models" / "sequential_test.py",
        KERAS_SRC / "saving" / "saving_lib_test.py"]
    return [str(f) for f in files if f.name not in LEFT_OUT]


def _start(tmp_path: Path, label: str, plugin: bool) -> tuple[subprocess.Popen, Path, Path]:
    junit, counts = tmp_path / f"{label}.xml", tmp_path / f"{label}.json"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests" / "keras_suite")]),
               SVGD_KERAS_SUITE_COUNTS=str(counts))
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "ignore",
           f"--junitxml={junit}", "--rootdir", str(tmp_path)]
    cmd += (["-p", "identity_plugin"] if plugin else []) + keras_test_files()
    work = tmp_path / label
    work.mkdir()
    proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    return proc, junit, counts


def _outcomes(junit: Path) -> dict[str, str]:
    out = {}
    for case in ET.parse(junit).iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        tags = {child.tag for child in case}
        out[name] = ("failed" if tags & {"failure", "error"} else
                     "skipped" if "skipped" in tags else "passed")
    return out


def test_keras_own_tests_fail_the_same_with_identity_enable(tmp_path):
    plain, plain_xml, _ = _start(tmp_path, "plain", plugin=False)
    enabled, enabled_xml, counts = _start(tmp_path, "enabled", plugin=True)
    logs = {"plain": plain.communicate(timeout=1800)[0],
            "enabled": enabled.communicate(timeout=1800)[0]}
    assert plain_xml.exists() and enabled_xml.exists(), logs["enabled"][-3000:]
    before, after = _outcomes(plain_xml), _outcomes(enabled_xml)
    assert set(before) == set(after) and len(before) > 200
    only_enabled = sorted(t for t in after if after[t] == "failed" and before[t] != "failed")
    assert only_enabled == [], logs["enabled"][-6000:]
    compiled = json.loads(counts.read_text())
    # the plugin reached the models: nearly every compile was enabled
    assert compiled["compiled"] > 150 and compiled["enabled"] >= compiled["compiled"] - 5, compiled
    assert sum(v == "passed" for v in after.values()) > 200
