"""Optimizer-state size: SVGD accumulators (full, channel) vs RMSprop and Adam.

SVGD figures come from the rewrite report; RMSprop and Adam from the Keras optimizers' actual
variables after ``build`` (the iteration counter and learning rate left out).

    python -m benchmarks.memory [--quick]
"""
from __future__ import annotations

import numpy as np

import svgd_rewrite
from benchmarks.common import MODELS, OPTIMIZERS, parser, print_table, write_results
from fixtures import keras_models


def optimizer_state(model, method: str) -> tuple[int, int]:
    opt = OPTIMIZERS[method]()
    opt.build(model.trainable_variables)
    slots = [v for v in opt.variables if len(v.shape) > 0]  # not iterations / learning_rate
    floats = int(sum(np.prod(v.shape) for v in slots))
    return floats, int(sum(np.prod(v.shape) * v.dtype.itemsize if hasattr(v.dtype, "itemsize")
                           else np.prod(v.shape) * 4 for v in slots))


def measure(name: str) -> dict:
    builder, _ = MODELS[name]
    model = builder(0)
    params = int(sum(np.prod(w.shape) for w in model.trainable_variables))
    out = {"params": params}
    step = keras_models.train_step(model, OPTIMIZERS["sgd"](), l1=0)
    for granularity in ("full", "channel"):
        memory = svgd_rewrite.analyze_step(step, granularity=granularity).memory
        out[f"svgd_{granularity}"] = {"floats": memory.accumulator_floats,
                                      "bytes": memory.accumulator_bytes}
    for method in ("rmsprop", "adam"):
        floats, size = optimizer_state(builder(0), method)
        out[method] = {"floats": floats, "bytes": size}
    return out


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    results = {name: measure(name) for name in MODELS}
    rows = []
    for name, r in results.items():
        for method in ("svgd_full", "svgd_channel", "rmsprop", "adam"):
            rows.append([name, r["params"], method, r[method]["floats"], r[method]["bytes"],
                         f"{r[method]['floats'] / r['params']:.3f}"])
    print_table(["model", "params", "method", "state floats", "state bytes", "× params"], rows)
    print("wrote", write_results(args.out, "memory", results, args.quick))


if __name__ == "__main__":
    main()
