"""Convergence on real data: scikit-learn's bundled 8×8 digits — SGD, RMSprop, Adam, and SVGD
(the rewritten SGD step), SVGD feeding SGD with momentum and feeding Adam, and for the CNN SVGD
at channel granularity.

A fixed stratified train/validation/test split; the paper's MLP shape (64 inputs, batch norm)
and a small CNN. Every method gets the same budget: a grid of ``GRID_SIZE`` configurations
(one learning-rate axis of 12 values, or 3 learning rates × 4 scales s for SVGD, the paper's
0.1, 0.01 and 0.001 among them), chosen on validation error with seed 0. A chosen setting on
an edge of its grid extends that axis by one step outward and is chosen again (up to
``MAX_WIDEN`` times); a setting still on an edge is marked in the table. Then 5 seeds with the
chosen setting; mean ± std; a paired comparison per seed between the best SVGD variant and the
best other method; the mean wall time per step of each method, measured in this run. The
paper's step-decay shape: α until 27 % of the steps, α/2 until 60 %, α/10 after. Writes a
table, JSON and a PNG of test error vs step (mean and a ±1 std band per method).

    python -m benchmarks.convergence [--quick]
"""
from __future__ import annotations

import math
import os
import time

import keras
import numpy as np
import tensorflow as tf

import svgd_rewrite
from benchmarks.common import parser, print_table, write_results
from fixtures import keras_models

BATCH = 32
GRID_SIZE = 12
MAX_WIDEN = 3
LR_STEP = 10 ** 0.25  # ×1.78 between neighbouring learning rates
S_VALUES = [0.001, 0.01, 0.1, 1.0]  # the paper's per-architecture s (0.1, 0.01, 0.001) and 1

# method -> (optimizer, rewritten with SVGD, granularity, the centre of its lr axis)
METHODS = {
    "sgd": ("sgd", False, None, 0.1),
    "rmsprop": ("rmsprop", False, None, 1e-3),
    "adam": ("adam", False, None, 1e-3),
    "svgd": ("sgd", True, "full", 0.01),
    "svgd_momentum": ("momentum", True, "full", 0.003),
    "svgd_adam": ("adam", True, "full", 1e-3),
    "svgd_channel": ("sgd", True, "channel", 0.01),  # the CNN only
}
LABELS = {"sgd": "SGD", "rmsprop": "RMSprop", "adam": "Adam", "svgd": "SVGD",
          "svgd_momentum": "SVGD → momentum 0.9", "svgd_adam": "SVGD → Adam",
          "svgd_channel": "SVGD (channel)"}


def lr_axis(centre: float, n: int) -> list[float]:
    """``n`` learning rates around ``centre``, ``LR_STEP`` apart."""
    return [float(f"{centre * LR_STEP ** (k - (n - 1) / 2):.3g}") for k in range(n)]


def initial_grid(method: str) -> tuple[list[float], list[float | None]]:
    """(learning rates, scales) of a method's first grid: ``GRID_SIZE`` configurations."""
    centre = METHODS[method][3]
    if METHODS[method][1]:
        return lr_axis(centre, GRID_SIZE // len(S_VALUES)), list(S_VALUES)
    return lr_axis(centre, GRID_SIZE), [None]


def load_data(seed: int = 0):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    y = y.astype(np.int32)
    x_train, x_rest, y_train, y_rest = train_test_split(x, y, test_size=0.4, stratify=y,
                                                        random_state=seed)
    x_val, x_test, y_val, y_test = train_test_split(x_rest, y_rest, test_size=0.5,
                                                    stratify=y_rest, random_state=seed)
    return (x_train, y_train), (x_val, y_val), (x_test, y_test)


def build_model(kind: str, seed: int) -> keras.Model:
    if kind == "mlp":
        return keras_models.paper_mlp(input_dim=64, seed=seed)
    keras.utils.set_random_seed(seed)
    L = keras.layers
    return keras.Sequential([keras.Input((64,)), L.Reshape((8, 8, 1)),
                             L.Conv2D(16, 3, padding="same", activation="relu"),
                             L.Conv2D(32, 3, padding="same", activation="relu"),
                             L.MaxPooling2D(), L.Flatten(), L.Dense(10)], name="digits_cnn")


def schedule(lr: float, steps: int):
    return keras.optimizers.schedules.PiecewiseConstantDecay(
        [int(0.27 * steps), int(0.6 * steps)], [lr, lr / 2, lr / 10])


def _optimizer(name: str, lr):
    if name == "momentum":
        return keras.optimizers.SGD(lr, momentum=0.9)
    return {"sgd": keras.optimizers.SGD, "rmsprop": keras.optimizers.RMSprop,
            "adam": keras.optimizers.Adam}[name](lr)


def run(kind: str, method: str, lr: float, s: float | None, seed: int, steps: int, data,
        eval_every: int) -> dict:
    """One training run: the test/validation error curve and the mean time per step."""
    (x_train, y_train), evaluation = data[0], data[1:]
    model = build_model(kind, seed)
    opt_name, svgd, granularity, _ = METHODS[method]
    opt = _optimizer(opt_name, schedule(lr, steps))
    step = keras_models.train_step(model, opt, l1=1e-4 if kind == "mlp" else 0.0, batch=BATCH)
    if svgd:
        step = svgd_rewrite.rewrite(step, scale=s, granularity=granularity)
    rng = np.random.default_rng(seed)
    curve, seconds = [], 0.0

    def errors():
        return [float(np.mean(np.argmax(model(x, training=False), axis=1) != y))
                for x, y in evaluation]

    for i in range(1, steps + 1):
        idx = rng.choice(len(x_train), BATCH, replace=False)
        xb, yb = tf.constant(x_train[idx]), tf.constant(y_train[idx])
        start = time.perf_counter()
        loss = float(step(xb, yb))
        if i > 10:  # after tracing and warm-up
            seconds += time.perf_counter() - start
        if i % eval_every == 0 or i == steps:
            val, test = errors()
            if not math.isfinite(loss):
                val = test = 1.0
            curve.append({"step": i, "val_error": val, "test_error": test, "loss": loss})
    return {"curve": curve, "ms_per_step": 1000 * seconds / max(steps - 10, 1)}


def search(kind: str, method: str, steps: int, data, eval_every: int, quick: bool):
    """Seed-0 runs over the grid, widened at the edges; the chosen (lr, s), the runs, and
    which axes of the choice are still at an edge."""
    lrs, scales = initial_grid(method)
    if quick:
        lrs, scales = lrs[len(lrs) // 2:len(lrs) // 2 + 1], scales[-2:-1] if scales[0] else [None]
    runs: dict[tuple, dict] = {}

    def evaluate():
        for lr in lrs:
            for s in scales:
                if (lr, s) not in runs:
                    runs[(lr, s)] = run(kind, method, lr, s, 0, steps, data, eval_every)

    def best():
        return min(runs, key=lambda c: (runs[c]["curve"][-1]["val_error"], c[0]))

    evaluate()
    for _ in range(0 if quick else MAX_WIDEN):
        lr, s = best()
        grew = False
        if lr == min(lrs):
            lrs.insert(0, float(f"{lrs[0] / LR_STEP:.3g}"))
            grew = True
        elif lr == max(lrs):
            lrs.append(float(f"{lrs[-1] * LR_STEP:.3g}"))
            grew = True
        if s is not None and len(scales) > 1:
            if s == min(scales):
                scales.insert(0, scales[0] / 10)
                grew = True
            elif s == max(scales):
                scales.append(scales[-1] * 10)
                grew = True
        if not grew:
            break
        evaluate()
    lr, s = best()
    edges = []
    if len(lrs) > 1 and lr in (min(lrs), max(lrs)):
        edges.append("lr")
    if s is not None and len(scales) > 1 and s in (min(scales), max(scales)):
        edges.append("s")
    return (lr, s), runs, edges


def paired(a: list[float], b: list[float]) -> dict:
    """Per-seed differences a − b (test error): mean, std, wins of a, a paired t-test."""
    from scipy import stats

    d = np.asarray(a) - np.asarray(b)
    test = stats.ttest_rel(a, b) if len(a) > 1 and np.any(d != 0) else None
    return {"mean_difference": float(d.mean()), "std_difference": float(d.std(ddof=1))
            if len(d) > 1 else 0.0, "svgd_better_seeds": int(np.sum(d < 0)),
            "seeds": len(d), "p_value": float(test.pvalue) if test is not None else 1.0}


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    steps, seeds, eval_every = (300, 2, 100) if args.quick else (2000, 5, 200)
    data = load_data()
    results, rows = {}, []
    for kind in ("mlp", "cnn"):
        results[kind] = {}
        methods = [m for m in METHODS if m != "svgd_channel" or kind == "cnn"]
        if args.quick:
            methods = ["sgd", "adam", "svgd"] + (["svgd_channel"] if kind == "cnn" else [])
        for method in methods:
            (lr, s), runs, edges = search(kind, method, steps, data, eval_every, args.quick)
            chosen = runs[(lr, s)]
            others = [run(kind, method, lr, s, seed, steps, data, eval_every)
                      for seed in range(1, seeds)]
            curves = [chosen["curve"]] + [o["curve"] for o in others]
            final = [c[-1]["test_error"] for c in curves]
            per_curve = np.array([[p["test_error"] for p in c] for c in curves])
            results[kind][method] = {
                "config": {"lr": lr, **({"s": s} if s is not None else {})},
                "configurations_tried": len(runs), "at_grid_edge": edges,
                "validation_errors": {f"lr={c[0]:g}" + (f", s={c[1]:g}" if c[1] else ""):
                                      r["curve"][-1]["val_error"] for c, r in runs.items()},
                "test_errors": final, "test_error_mean": float(np.mean(final)),
                "test_error_std": float(np.std(final)),
                "ms_per_step": float(np.mean([chosen["ms_per_step"]]
                                             + [o["ms_per_step"] for o in others])),
                "steps": [p["step"] for p in curves[0]],
                "test_error_curve_mean": per_curve.mean(axis=0).tolist(),
                "test_error_curve_std": per_curve.std(axis=0).tolist()}
            r = results[kind][method]
            config = ", ".join(f"{k} {v:g}" for k, v in r["config"].items())
            rows.append([kind, LABELS[method], config + (" (edge: " + ", ".join(edges) + ")"
                                                          if edges else ""),
                         str(len(runs)), f"{100 * r['test_error_mean']:.2f} ± "
                         f"{100 * r['test_error_std']:.2f}", f"{r['ms_per_step']:.2f}"])
        svgd_best = min((m for m in results[kind] if m.startswith("svgd")),
                        key=lambda m: results[kind][m]["test_error_mean"])
        other_best = min((m for m in results[kind] if not m.startswith("svgd")),
                         key=lambda m: results[kind][m]["test_error_mean"])
        results[kind]["paired"] = {"svgd": svgd_best, "other": other_best, **paired(
            results[kind][svgd_best]["test_errors"], results[kind][other_best]["test_errors"])}
    print_table(["model", "method", "chosen on validation", "configs", "test error %",
                 "ms/step"], rows)
    for kind in ("mlp", "cnn"):
        p = results[kind]["paired"]
        print(f"{kind}: {LABELS[p['svgd']]} − {LABELS[p['other']]} = "
              f"{100 * p['mean_difference']:+.2f} ± {100 * p['std_difference']:.2f} points "
              f"per seed; SVGD better on {p['svgd_better_seeds']}/{p['seeds']} seeds; "
              f"paired t-test p = {p['p_value']:.3f}")
    png = plot(results, args.out, args.quick)
    results["settings"] = {"steps": steps, "seeds": seeds, "batch": BATCH,
                           "grid_size": GRID_SIZE, "lr_step": LR_STEP, "s_values": S_VALUES,
                           "schedule": "α, α/2 from 27%, α/10 from 60% of the steps",
                           "split": "60/20/20 stratified, random_state=0",
                           "png": os.path.basename(png)}
    print("wrote", write_results(args.out, "convergence", results, args.quick), "and", png)


def plot(results: dict, out_dir: str, quick: bool) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, kind in zip(axes, ("mlp", "cnn")):
        for method, r in results[kind].items():
            if method == "paired":
                continue
            mean = 100 * np.asarray(r["test_error_curve_mean"])
            std = 100 * np.asarray(r["test_error_curve_std"])
            line, = ax.plot(r["steps"], mean, label=LABELS[method])
            ax.fill_between(r["steps"], mean - std, mean + std, alpha=0.15,
                            color=line.get_color())
        ax.set_title(f"digits, {'paper-shape MLP' if kind == 'mlp' else 'small CNN'}")
        ax.set_xlabel("step")
        ax.set_ylabel("test error % (mean ± std over seeds)")
        ax.set_ylim(0, 12)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"convergence{'_quick' if quick else ''}.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    main()
