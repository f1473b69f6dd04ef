"""Step time: SGD, the SGD step re-emitted without surgery (the fair baseline for the
rewrite's own cost), the rewritten SVGD step, RMSprop and Adam, and SGD / SVGD / Adam with
``jit_compile=True`` (XLA), side by side in one process.

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
from svgd_rewrite.emit import SVGDStep
from svgd_rewrite.load import load_step
from svgd_rewrite.surgery import Rewritten

METHODS = ("sgd", "baseline", "svgd", "rmsprop", "adam", "sgd_xla", "svgd_xla", "adam_xla")


def reemitted(step) -> SVGDStep:
    """The step through the same load (inlining) and emit path, without any site."""
    loaded = load_step(step)
    return SVGDStep(loaded, Rewritten(graph_def=loaded.graph_def, accumulators=[]), report=None)


def build_steps(name: str, scale: float = 0.1) -> dict:
    builder, _ = MODELS[name]
    steps = {}
    for method in METHODS:
        model = builder(0)
        base = method.removesuffix("_xla")
        opt = OPTIMIZERS["sgd" if base in ("svgd", "baseline") else base]()
        step = keras_models.train_step(model, opt, l1=0,
                                       jit_compile=True if method.endswith("_xla") else None)
        if base == "svgd":
            step = svgd_rewrite.rewrite(step, scale=scale)
        elif base == "baseline":
            step = reemitted(step)
        steps[method] = step
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
    out = {"batch": batch, "repetitions": reps, "steps_per_repetition": inner}
    out.update({f"{m}_ms": ms[m] for m in METHODS})
    out.update(svgd_over_sgd=ms["svgd"] / ms["sgd"], svgd_over_baseline=ms["svgd"] / ms["baseline"],
               rmsprop_over_sgd=ms["rmsprop"] / ms["sgd"], adam_over_sgd=ms["adam"] / ms["sgd"],
               svgd_over_sgd_xla=ms["svgd_xla"] / ms["sgd_xla"],
               adam_over_sgd_xla=ms["adam_xla"] / ms["sgd_xla"])
    return out


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    reps, inner = (3, 2) if args.quick else (15, 5)
    results = {name: measure(name, reps, inner) for name in MODELS}
    print_table(["model", "batch", "SGD ms", "re-emitted ms", "SVGD ms", "RMSprop ms", "Adam ms",
                 "SVGD/SGD", "SVGD/re-emitted", "RMSprop/SGD", "Adam/SGD"],
                [[n, r["batch"], r["sgd_ms"], r["baseline_ms"], r["svgd_ms"], r["rmsprop_ms"],
                  r["adam_ms"], r["svgd_over_sgd"], r["svgd_over_baseline"],
                  r["rmsprop_over_sgd"], r["adam_over_sgd"]] for n, r in results.items()])
    print()
    print_table(["model (XLA)", "SGD ms", "SVGD ms", "Adam ms", "SVGD/SGD", "Adam/SGD"],
                [[n, r["sgd_xla_ms"], r["svgd_xla_ms"], r["adam_xla_ms"], r["svgd_over_sgd_xla"],
                  r["adam_over_sgd_xla"]] for n, r in results.items()])
    print("wrote", write_results(args.out, "step_time", results, args.quick))


if __name__ == "__main__":
    main()
