"""Step time: SGD, the rewritten SVGD step, RMSprop and Adam, side by side in one process.

All steps are traced and warmed up first, then run interleaved round-robin; each entry is the
median over repetitions of the mean time of a few consecutive steps.

    python -m benchmarks.step_time [--quick]
"""
from __future__ import annotations

import statistics
import time

import svgd_rewrite
from benchmarks.common import MODELS, OPTIMIZERS, parser, print_table, random_batch, write_results
from fixtures import keras_models

METHODS = ("sgd", "svgd", "rmsprop", "adam")


def build_steps(name: str, scale: float = 0.1) -> dict:
    builder, batch = MODELS[name]
    steps = {}
    for method in METHODS:
        model = builder(0)
        opt = OPTIMIZERS["sgd" if method == "svgd" else method]()
        step = keras_models.train_step(model, opt, l1=0)
        steps[method] = svgd_rewrite.rewrite(step, scale=scale) if method == "svgd" else step
    return steps


def measure(name: str, reps: int, inner: int) -> dict:
    _, batch = MODELS[name]
    steps = build_steps(name)
    x, y = random_batch(MODELS[name][0](0), batch)
    for step in steps.values():  # trace and warm up
        for _ in range(2):
            float(step(x, y))
    times = {m: [] for m in METHODS}
    for _ in range(reps):
        for method in METHODS:
            start = time.perf_counter()
            for _ in range(inner):
                loss = steps[method](x, y)
            float(loss)
            times[method].append((time.perf_counter() - start) / inner * 1000)
    ms = {m: statistics.median(v) for m, v in times.items()}
    return {"batch": batch, "repetitions": reps, "steps_per_repetition": inner,
            "sgd_ms": ms["sgd"], "svgd_ms": ms["svgd"], "rmsprop_ms": ms["rmsprop"],
            "adam_ms": ms["adam"], "svgd_over_sgd": ms["svgd"] / ms["sgd"],
            "rmsprop_over_sgd": ms["rmsprop"] / ms["sgd"], "adam_over_sgd": ms["adam"] / ms["sgd"]}


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    reps, inner = (3, 2) if args.quick else (15, 5)
    results = {name: measure(name, reps, inner) for name in MODELS}
    print_table(["model", "batch", "SGD ms", "SVGD ms", "RMSprop ms", "Adam ms", "SVGD/SGD",
                 "RMSprop/SGD", "Adam/SGD"],
                [[n, r["batch"], r["sgd_ms"], r["svgd_ms"], r["rmsprop_ms"], r["adam_ms"],
                  r["svgd_over_sgd"], r["rmsprop_over_sgd"], r["adam_over_sgd"]]
                 for n, r in results.items()])
    print("wrote", write_results(args.out, "step_time", results, args.quick))


if __name__ == "__main__":
    main()
