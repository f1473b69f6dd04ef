"""The cost of ``svgd_rewrite.keras.Diagnostics`` on the paper's MNIST MLP: Keras ``fit`` with
SVGD without the callback, and with it logging every step, every 10 and every 100 steps (r's
figures, the norm ratio from the step's probe, s) — side by side in one process
(alternating epochs, the median of each).

    python -m benchmarks.diagnostics_cost [--quick]
"""
from __future__ import annotations

import statistics
import tempfile

import keras
import numpy as np

import svgd_rewrite.keras
from benchmarks.common import MODELS, parser, print_table, write_results
from benchmarks.fit_throughput import _Timer

MODES = {"svgd": None, "every_step": 1, "every_10": 10, "every_100": 100}


def measure(rounds: int, steps: int) -> dict:
    build, batch = MODELS["mnist_mlp"]
    rng = np.random.default_rng(0)
    models, callbacks = {}, {}
    logs = tempfile.mkdtemp(prefix="svgd_diagnostics_")
    for mode, setting in MODES.items():
        model = build(0)
        model.compile(optimizer=keras.optimizers.SGD(0.01),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        svgd_rewrite.keras.enable(model, scale=0.1)
        models[mode] = model
    shape = (batch * steps,) + tuple(models["svgd"].input_shape[1:])
    x = rng.normal(size=shape).astype(np.float32)
    y = rng.integers(0, models["svgd"].output_shape[-1], size=len(x)).astype(np.int32)
    for mode, setting in MODES.items():
        callbacks[mode] = [] if setting is None else [svgd_rewrite.keras.Diagnostics(
            f"{logs}/{mode}", every=setting)]
    timers = {mode: _Timer() for mode in models}
    for mode, model in models.items():  # warm-up: tracing, the rewrite, the probe
        model.fit(x, y, batch_size=batch, epochs=1, verbose=0, callbacks=callbacks[mode])
    for _ in range(rounds):
        for mode, model in models.items():
            model.fit(x, y, batch_size=batch, epochs=1, verbose=0,
                      callbacks=callbacks[mode] + [timers[mode]])
    ms = {mode: 1000 * statistics.median(t.epoch_s) / steps for mode, t in timers.items()}
    return {"batch": batch, "steps_per_epoch": steps, "ms_per_step": ms,
            "over_svgd": {mode: ms[mode] / ms["svgd"] for mode in ms}}


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    rounds, steps = (2, 10) if args.quick else (7, 200)
    result = measure(rounds, steps)
    print_table(["mode", "ms/step", "× SVGD without the callback"],
                [[m, f"{result['ms_per_step'][m]:.2f}", f"{result['over_svgd'][m]:.3f}"]
                 for m in MODES])
    print("wrote", write_results(args.out, "diagnostics_cost", {"mnist_mlp": result},
                                 args.quick))


if __name__ == "__main__":
    main()
