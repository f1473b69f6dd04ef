"""The cost of ``svgd_rewrite.keras.Diagnostics`` on the paper's MNIST MLP: Keras training
with SVGD and the callback logging every step (r's figures, the norm ratio from the step's own
gradients, s; r's histograms every 10 steps, the default), every step with the histograms
every step too, every step with the norm ratio every 10 steps, every 10 and every 100 steps,
against the same models' steps without the callback — side by side in one process.

Each model alternates, step by step, between its train function with the callback and
Keras's own (the one the callback wraps, which the steps not logged run), so that a mode's
cost is measured on the same models: one model's step time can sit a few per cent off
another's for a whole run (memory placement), which no comparison across models removes.
Each logged train function is traced before the measurement (``warm``). The models train
in turns, one ``train_on_batch`` each, in a new order every round, so that a burst of load
on the machine hits every mode alike; a mode's cost is the mean over its
models (``instances``) of the mean step time with the callback over that without it. The
callback's steps are counted apart (its k advances only on them), so "every 10" logs every
tenth of them. ``none`` alternates Keras's own function with itself: the noise floor.

    python -m benchmarks.diagnostics_cost [--quick]
"""
from __future__ import annotations

import statistics
import tempfile
import time

import keras
import numpy as np

import svgd_rewrite.keras
from benchmarks.common import MODELS, parser, print_table, write_results

MODES = {"none": None, "every_step": {"every": 1},
         "every_step_histograms_every_step": {"every": 1, "histogram_every": 1},
         "every_step_ratio_every_10": {"every": 1, "ratio_every": 10},
         "every_10": {"every": 10}, "every_100": {"every": 100}}


def warm(model, callback, batch) -> None:
    """Trace each of the callback's logged train functions (the first step k logging each
    combination of figures traces one: k = 0, every, ratio_every, histogram_every), then
    start again from step 0, so that no tracing falls in the measured steps."""
    iterations = model.optimizer.iterations
    for k in sorted({0, callback.every, callback.ratio_every, callback.histogram_every}):
        iterations.assign(k)
        callback.on_train_begin()  # the callback's steps count on from the model's
        model.train_on_batch(*batch)
    iterations.assign(0)
    callback.on_train_begin()


def measure(rounds: int, steps: int, instances: int) -> dict:
    build, batch = MODELS["mnist_mlp"]
    rng = np.random.default_rng(0)
    models, functions = {}, {}  # functions[key]: (with the callback, Keras's own)
    logs = tempfile.mkdtemp(prefix="svgd_diagnostics_")
    callbacks = {}
    for mode, every in MODES.items():
        for i in range(instances):
            model = build(0)
            model.compile(optimizer=keras.optimizers.SGD(0.01),
                          loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
            svgd_rewrite.keras.enable(model, scale=0.1)
            models[mode, i] = model
            model.make_train_function()
            own = model.train_function
            if every is not None:
                callback = svgd_rewrite.keras.Diagnostics(f"{logs}/{mode}_{i}", **every)
                callback.set_model(model)
                callback.on_train_begin()
                callbacks[mode, i] = callback
            functions[mode, i] = (model.train_function, own)
    first = models["none", 0]
    shape = (batch * steps,) + tuple(first.input_shape[1:])
    x = rng.normal(size=shape).astype(np.float32)
    y = rng.integers(0, first.output_shape[-1], size=len(x)).astype(np.int32)
    batches = [(x[i:i + batch], y[i:i + batch]) for i in range(0, len(x), batch)]
    for (mode, i), callback in callbacks.items():  # trace every logged function up front
        warm(models[mode, i], callback, batches[0])
    turns = [(key, half) for key in models for half in (0, 1)]  # half 0: with the callback
    seconds: dict = {turn: [] for turn in turns}
    for k in range(rounds * steps + 20):  # the first 20 rounds warm up (tracing, the rewrite)
        rng.shuffle(turns)
        for key, half in turns:
            model = models[key]
            model.train_function = functions[key][half]
            start = time.perf_counter()
            model.train_on_batch(*batches[k % len(batches)])
            if k >= 20:
                seconds[key, half].append(time.perf_counter() - start)
    for callback in callbacks.values():
        callback.on_train_end()
    ms = {turn: 1000 * statistics.mean(s) for turn, s in seconds.items()}
    each = {mode: [ms[(mode, i), 0] / ms[(mode, i), 1] for i in range(instances)]
            for mode in MODES}
    return {"batch": batch, "steps": rounds * steps, "instances": instances,
            "ms_per_step": {mode: statistics.mean(ms[(mode, i), 0] for i in range(instances))
                            for mode in MODES},
            "ms_per_step_without": {mode: statistics.mean(ms[(mode, i), 1]
                                                          for i in range(instances))
                                    for mode in MODES},
            "over_without": {mode: statistics.mean(v) for mode, v in each.items()},
            "each_over_without": each}


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    rounds, steps, instances = (2, 10, 1) if args.quick else (10, 200, 3)
    result = measure(rounds, steps, instances)
    print_table(["mode", "ms/step with", "ms/step without", "× without the callback",
                 "each model"],
                [[m, f"{result['ms_per_step'][m]:.3f}", f"{result['ms_per_step_without'][m]:.3f}",
                  f"{result['over_without'][m]:.3f}",
                  " ".join(f"{v:.3f}" for v in result["each_over_without"][m])] for m in MODES])
    print("wrote", write_results(args.out, "diagnostics_cost", {"mnist_mlp": result},
                                 args.quick))


if __name__ == "__main__":
    main()
