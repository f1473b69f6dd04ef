"""Shared test helpers: build a fixture step, its rewrite and an oracle from the same seed."""
from __future__ import annotations

import re

import numpy as np
import tensorflow as tf

from fixtures.models import SPECS, TrainModule


# A progress line of the command line (with ``-v``: "[  1.2 s] " before the stage name).
STAGE_LINE = re.compile(r"^svgd-rewrite: (?:\[ *[0-9.]+ s\] )?"
                        r"(import|load|analyze|plan|surgery|emit|write|export)\b")


def rel_error(a: np.ndarray, b: np.ndarray) -> float:
    """||a-b|| / ||b||, with a floor of 1e-2·sqrt(n) on ||b|| for mathematically-zero values.

    (Biases in front of a batch norm get gradients that are zero up to rounding, ~1e-9.)
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-2 * np.sqrt(b.size)))


def assert_close(got: dict[str, np.ndarray], want: dict[str, np.ndarray], rtol: float, what=""):
    assert sorted(got) == sorted(want), f"{what}: {sorted(got)} != {sorted(want)}"
    for k in sorted(got):
        a, b = np.asarray(got[k]), np.asarray(want[k])
        if a.shape != b.shape and a.size == b.size:  # e.g. Conv1D: [1, W, C] vs [W, C]
            a = a.reshape(b.shape)
        assert a.shape == b.shape, f"{what} {k}: shapes {a.shape} != {b.shape}"
        err = rel_error(a, b)
        assert err <= rtol, f"{what} {k}: relative error {err:.3g} > {rtol:g}"


def module_values(m: TrainModule) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in {**m.params, **m.state}.items()}


def accumulators_by_variable(step) -> dict[str, list[np.ndarray]]:
    out: dict[str, list[np.ndarray]] = {}
    for site, acc in zip(step.report.sites, step.accumulators):
        out.setdefault(site.variable, []).append(acc.numpy())
    return out


def make_module(name: str, seed: int = 0, lr: float = 0.05, **kw) -> TrainModule:
    return TrainModule(SPECS[name](), seed=seed, learning_rate=lr, **kw)


def tensor_values(variables) -> list[np.ndarray]:
    return [tf.convert_to_tensor(v).numpy() for v in variables]
