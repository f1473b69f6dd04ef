"""Keras fit throughput (steps/s) with and without ``svgd_rewrite.keras.enable``, measured
side by side in one process (alternating epochs, the median of each).

    python -m benchmarks.fit_throughput [--quick]
"""
from __future__ import annotations

import statistics
import time

import keras
import numpy as np

import svgd_rewrite.keras
from benchmarks.common import MODELS, parser, print_table, write_results


class _Timer(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.epoch_s: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_s.append(time.perf_counter() - self._start)


def measure(name: str, rounds: int, steps: int) -> dict:
    build, batch = MODELS[name]
    models = {}
    for mode in ("sgd", "svgd"):
        model = build(0)
        model.compile(optimizer=keras.optimizers.SGD(0.01),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"])
        if mode == "svgd":
            svgd_rewrite.keras.enable(model, scale=0.01)
        models[mode] = model
    rng = np.random.default_rng(0)
    shape = (batch * steps,) + tuple(models["sgd"].input_shape[1:])
    x = rng.normal(size=shape).astype(np.float32)
    y = rng.integers(0, models["sgd"].output_shape[-1], size=len(x)).astype(np.int32)
    timers = {mode: _Timer() for mode in models}
    for mode, model in models.items():  # warm-up: tracing (and the rewrite) happen here
        model.fit(x, y, batch_size=batch, epochs=1, verbose=0)
    for _ in range(rounds):
        for mode, model in models.items():
            model.fit(x, y, batch_size=batch, epochs=1, verbose=0, callbacks=[timers[mode]])
    rate = {mode: steps / statistics.median(t.epoch_s) for mode, t in timers.items()}
    return {"batch": batch, "steps_per_epoch": steps, "sgd_steps_per_s": rate["sgd"],
            "svgd_steps_per_s": rate["svgd"], "svgd_over_sgd_time": rate["sgd"] / rate["svgd"]}


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    rounds, steps = (2, 10) if args.quick else (7, 50)
    names = ["mnist_mlp"] if args.quick else list(MODELS)
    results = {n: measure(n, rounds, steps) for n in names}
    print_table(["model", "batch", "SGD steps/s", "SVGD steps/s", "SVGD/SGD time"],
                [[n, r["batch"], r["sgd_steps_per_s"], r["svgd_steps_per_s"],
                  r["svgd_over_sgd_time"]] for n, r in results.items()])
    print("wrote", write_results(args.out, "fit_throughput", results, args.quick))


if __name__ == "__main__":
    main()
