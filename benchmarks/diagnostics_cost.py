"""The cost of ``svgd_rewrite.keras.Diagnostics`` on the paper's MNIST MLP: Keras training
with SVGD without the callback, and with it logging every step, every step with the norm ratio
every 10 steps, every 10 and every 100 steps (r's figures, the norm ratio from the step's own
gradients, s) — side by side in one process.

The models train in turns, one ``train_on_batch`` each (the callback started as ``fit``
starts it), so that a burst of load on the machine hits every mode alike; a mode's cost is its
mean step time (logged and unlogged steps together) over the mean step time without the
callback. Each mode runs on several models (``instances``, the same weights): one model's
step time can sit a few per cent off another's for the whole run, so a mode's time is the mean
over its models. ``svgd_twin`` is a second set of models without the callback: its ratio is
the noise floor of the measurement.

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

MODES = {"svgd": None, "svgd_twin": None, "every_step": {"every": 1},
         "every_step_ratio_every_10": {"every": 1, "ratio_every": 10},
         "every_10": {"every": 10}, "every_100": {"every": 100}}


def measure(rounds: int, steps: int, instances: int) -> dict:
    build, batch = MODELS["mnist_mlp"]
    rng = np.random.default_rng(0)
    models, callbacks = {}, {}
    logs = tempfile.mkdtemp(prefix="svgd_diagnostics_")
    for mode, every in MODES.items():
        for i in range(instances):
            model = build(0)
            model.compile(optimizer=keras.optimizers.SGD(0.01),
                          loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
            svgd_rewrite.keras.enable(model, scale=0.1)
            models[mode, i] = model
            if every is not None:
                callbacks[mode, i] = svgd_rewrite.keras.Diagnostics(f"{logs}/{mode}_{i}", **every)
                callbacks[mode, i].set_model(model)
                callbacks[mode, i].on_train_begin()
    first = models["svgd", 0]
    shape = (batch * steps,) + tuple(first.input_shape[1:])
    x = rng.normal(size=shape).astype(np.float32)
    y = rng.integers(0, first.output_shape[-1], size=len(x)).astype(np.int32)
    batches = [(x[i:i + batch], y[i:i + batch]) for i in range(0, len(x), batch)]
    seconds: dict[tuple[str, int], list[float]] = {key: [] for key in models}
    order = list(models)
    for k in range(rounds * steps + 20):  # the first 20 turns warm up (tracing, the rewrite)
        rng.shuffle(order)
        for key in order:
            start = time.perf_counter()
            models[key].train_on_batch(*batches[k % len(batches)])
            if k >= 20:
                seconds[key].append(time.perf_counter() - start)
    for callback in callbacks.values():
        callback.on_train_end()
    each = {key: 1000 * statistics.mean(s) for key, s in seconds.items()}
    ms = {mode: statistics.mean(each[mode, i] for i in range(instances)) for mode in MODES}
    return {"batch": batch, "steps": rounds * steps, "instances": instances, "ms_per_step": ms,
            "over_svgd": {mode: ms[mode] / ms["svgd"] for mode in ms},
            "each_over_svgd": {mode: [each[mode, i] / ms["svgd"] for i in range(instances)]
                               for mode in MODES}}


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    rounds, steps, instances = (2, 10, 1) if args.quick else (10, 200, 3)
    result = measure(rounds, steps, instances)
    print_table(["mode", "ms/step (mean)", "× SVGD without the callback", "each model"],
                [[m, f"{result['ms_per_step'][m]:.3f}", f"{result['over_svgd'][m]:.3f}",
                  " ".join(f"{v:.3f}" for v in result["each_over_svgd"][m])] for m in MODES])
    print("wrote", write_results(args.out, "diagnostics_cost", {"mnist_mlp": result},
                                 args.quick))


if __name__ == "__main__":
    main()
