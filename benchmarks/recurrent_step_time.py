"""Step time of recurrent models, side by side in one process: SGD, SVGD (the rewritten SGD
step, its recurrent kernels scaled inside the loop) and Adam, for an LSTM, a GRU and a
SimpleRNN classifier (Keras 3 layers, the default ``unroll=False`` While loop).

Every step is traced and warmed up first, then all run interleaved round-robin; each entry is
the median over repetitions of the mean time of a few consecutive steps.

    python -m benchmarks.recurrent_step_time [--quick]
"""
from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

import svgd_rewrite
from benchmarks.common import OPTIMIZERS, interleaved_ms, parser, print_table, write_results
from fixtures import keras_models

BATCH, LENGTH, FEATURES, UNITS, CLASSES = 32, 20, 16, 64, 10
LAYERS = {"lstm": keras.layers.LSTM, "gru": keras.layers.GRU, "simple_rnn": keras.layers.SimpleRNN}
METHODS = ("sgd", "svgd", "adam")


def build(layer: str, seed: int = 0) -> keras.Model:
    """Input (LENGTH, FEATURES) → recurrent layer (UNITS) → Dense(CLASSES)."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((LENGTH, FEATURES)), LAYERS[layer](UNITS),
                             keras.layers.Dense(CLASSES)])


def measure(layer: str, reps: int, inner: int) -> dict:
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(BATCH, LENGTH, FEATURES)).astype(np.float32))
    y = tf.constant(rng.integers(0, CLASSES, size=BATCH).astype(np.int32))
    steps, sites = {}, 0
    for method in METHODS:
        model = build(layer)
        opt = OPTIMIZERS["adam" if method == "adam" else "sgd"]()
        step = keras_models.train_step(model, opt, l1=0)
        if method == "svgd":
            step = svgd_rewrite.rewrite(step, scale=0.1)
            sites = len(step.report.sites)
        steps[method] = step
    ms = interleaved_ms({m: (lambda step=steps[m]: step(x, y)) for m in METHODS}, reps, inner)
    return {"batch": BATCH, "length": LENGTH, "units": UNITS, "sites": sites,
            "repetitions": reps, "steps_per_repetition": inner,
            **{f"{m}_ms": ms[m] for m in METHODS},
            "svgd_over_sgd": ms["svgd"] / ms["sgd"], "adam_over_sgd": ms["adam"] / ms["sgd"],
            "svgd_over_adam": ms["svgd"] / ms["adam"]}


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    reps, inner = (3, 2) if args.quick else (15, 5)
    layers = ("lstm",) if args.quick else tuple(LAYERS)
    results = {layer: measure(layer, reps, inner) for layer in layers}
    print_table(["model", "batch×steps", "sites", "SGD ms", "SVGD ms", "Adam ms", "SVGD/SGD",
                 "Adam/SGD", "SVGD/Adam"],
                [[n, f"{r['batch']}×{r['length']}", r["sites"], r["sgd_ms"], r["svgd_ms"],
                  r["adam_ms"], r["svgd_over_sgd"], r["adam_over_sgd"], r["svgd_over_adam"]]
                 for n, r in results.items()])
    print("wrote", write_results(args.out, "recurrent_step_time", results, args.quick))


if __name__ == "__main__":
    main()
