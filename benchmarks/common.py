"""Shared pieces of the benchmark scripts: the paper's models, tables, result files."""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from typing import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from fixtures import keras_models  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")

# name -> (builder, batch size, input shape) — the paper's three models (Sec. 6)
MODELS: dict[str, tuple[Callable[[int], keras.Model], int]] = {
    "mnist_mlp": (lambda seed: keras_models.paper_mlp(seed=seed), 32),
    "cifar_vgg": (lambda seed: keras_models.vgg_cifar(seed=seed), 128),
    "resnet20": (lambda seed: keras_models.resnet(20, seed=seed), 128),
}

OPTIMIZERS = {
    "sgd": lambda: keras.optimizers.SGD(0.01),
    "rmsprop": lambda: keras.optimizers.RMSprop(0.001),
    "adam": lambda: keras.optimizers.Adam(0.001),
}


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="a short run (under 3 minutes)")
    p.add_argument("--out", default=RESULTS, help="results directory (default benchmarks/results)")
    return p


def machine() -> dict:
    return {"platform": platform.platform(), "processor": platform.processor(),
            "cpus": os.cpu_count(), "tensorflow": tf.__version__,
            "python": platform.python_version()}


def random_batch(model: keras.Model, batch: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch,) + tuple(model.input_shape[1:])).astype(np.float32)
    y = rng.integers(0, model.output_shape[-1], size=batch).astype(np.int32)
    return tf.constant(x), tf.constant(y)


def interleaved_ms(runs: dict, reps: int, inner: int) -> dict:
    """Median ms per call of each zero-argument ``runs[key]()`` (which returns a loss): every
    run warmed up twice, then all run round-robin, ``reps`` times ``inner`` calls each."""
    for run in runs.values():
        for _ in range(2):
            float(run())
    times = {k: [] for k in runs}
    for _ in range(reps):
        for key, run in runs.items():
            start = time.perf_counter()
            for _ in range(inner):
                loss = run()
            float(loss)
            times[key].append((time.perf_counter() - start) / inner * 1000)
    return {k: statistics.median(v) for k, v in times.items()}


def write_results(out_dir: str, name: str, results: dict, quick: bool) -> str:
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{name}{'_quick' if quick else ''}.json")
    payload = {"benchmark": name, "quick": quick, "machine": machine(),
               "date": time.strftime("%Y-%m-%d"), "results": results}
    with open(path, "w") as f:
        json.dump(payload, f, indent=2, sort_keys=True)
    return path


def print_table(header: list[str], rows: list[list]) -> None:
    cells = [[str(c) for c in header]] + [[f"{c:.3g}" if isinstance(c, float) else str(c)
                                          for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for k, r in enumerate(cells):
        print("  ".join(c.rjust(w) for c, w in zip(r, widths)))
        if k == 0:
            print("  ".join("-" * w for w in widths))
