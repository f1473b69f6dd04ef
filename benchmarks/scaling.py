"""Scaling under tf.distribute: step time with 1 and 2 replicas (MirroredStrategy over
logical CPU devices of this machine) for SGD, SVGD and Adam, and the floats each step
all-reduces (the gradients; SVGD adds each site's r-sized sums of g² plus one count).

The global batch is the same for 1 and 2 replicas (each replica gets half of it with 2).
All steps are traced and warmed up, then run interleaved round-robin; each entry is the median
over repetitions of the mean time of a few consecutive steps. With 2 logical devices on a
2-core machine the replicas share the cores: the table shows the rewrite's overhead under
replication, not a speed-up. Each model runs in its own process (tf.distribute's collective
keys restart with every strategy, and a collective instance keeps its first shape).

    python -m benchmarks.scaling [--quick]
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import tensorflow as tf  # noqa: E402

_CPU = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(_CPU, [tf.config.LogicalDeviceConfiguration()] * 2)

import numpy as np  # noqa: E402

import svgd_rewrite  # noqa: E402
from benchmarks.common import (MODELS, OPTIMIZERS, interleaved_ms, parser, print_table,  # noqa: E402
                               random_batch, write_results)
from fixtures.distributed import keras_distributed_step  # noqa: E402

METHODS = ("sgd", "svgd", "adam")
SCALE = 0.01


def _strategy(replicas: int) -> tf.distribute.Strategy:
    return tf.distribute.MirroredStrategy([f"/cpu:{k}" for k in range(replicas)])


def build(name: str, method: str, replicas: int, x, y):
    builder, batch = MODELS[name]
    strategy = _strategy(replicas)
    with strategy.scope():
        model = builder(0)
        optimizer = OPTIMIZERS["adam" if method == "adam" else "sgd"]()
        optimizer.build(model.trainable_variables)  # slots mirrored, before tracing
    step = keras_distributed_step(model, optimizer, strategy, batch)
    data = strategy.experimental_distribute_values_from_function(
        lambda ctx: (x[ctx.replica_id_in_sync_group * (batch // replicas):
                       (ctx.replica_id_in_sync_group + 1) * (batch // replicas)],
                     y[ctx.replica_id_in_sync_group * (batch // replicas):
                       (ctx.replica_id_in_sync_group + 1) * (batch // replicas)]))
    step.get_concrete_function(*data)
    params = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    extra = 0
    if method == "svgd":
        step = svgd_rewrite.rewrite(step, scale=SCALE)
        extra = sum(s.accumulator_size + 1 for s in step.report.sites)
    return (lambda: step(*data)), params, extra


def measure(name: str, reps: int, inner: int) -> dict:
    builder, batch = MODELS[name]
    x, y = random_batch(builder(0), batch)
    runs, floats = {}, {}
    for replicas in (1, 2):
        for method in METHODS:
            run, params, extra = build(name, method, replicas, x, y)
            runs[(method, replicas)] = run
            floats[method] = (params, extra)
    ms = interleaved_ms(runs, reps, inner)
    out = {"global_batch": batch, "repetitions": reps, "steps_per_repetition": inner,
           "gradient_floats": floats["sgd"][0], "svgd_extra_floats": floats["svgd"][1]}
    for (method, replicas), v in ms.items():
        out[f"{method}_{replicas}r_ms"] = v
    for replicas in (1, 2):
        out[f"svgd_over_sgd_{replicas}r"] = ms[("svgd", replicas)] / ms[("sgd", replicas)]
        out[f"adam_over_sgd_{replicas}r"] = ms[("adam", replicas)] / ms[("sgd", replicas)]
    return out


def _measure_in_subprocess(name: str, quick: bool) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.scaling", "--model", name] + (["--quick"] if quick
                                                                            else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--model", choices=sorted(MODELS), help="measure one model, print its JSON")
    args = p.parse_args()
    reps, inner = (3, 2) if args.quick else (11, 5)
    if args.model:
        print(json.dumps(measure(args.model, reps, inner)))
        return
    names = ["mnist_mlp"] if args.quick else list(MODELS)
    results = {name: _measure_in_subprocess(name, args.quick) for name in names}
    print_table(["model", "batch", "replicas", "SGD ms", "SVGD ms", "Adam ms", "SVGD/SGD",
                 "Adam/SGD"],
                [[n, r["global_batch"], k, r[f"sgd_{k}r_ms"], r[f"svgd_{k}r_ms"],
                  r[f"adam_{k}r_ms"], r[f"svgd_over_sgd_{k}r"], r[f"adam_over_sgd_{k}r"]]
                 for n, r in results.items() for k in (1, 2)])
    print()
    print_table(["model", "all-reduced floats per step (SGD, Adam)", "SVGD adds",
                 "SVGD adds (%)"],
                [[n, r["gradient_floats"], r["svgd_extra_floats"],
                  100.0 * r["svgd_extra_floats"] / r["gradient_floats"]]
                 for n, r in results.items()])
    print("wrote", write_results(args.out, "scaling", results, args.quick))


if __name__ == "__main__":
    main()
