"""Convergence on real data: scikit-learn's bundled 8×8 digits, SGD vs RMSprop vs Adam vs SVGD.

A fixed stratified train/validation/test split; the paper's MLP shape (64 inputs) and a small
CNN; per method a small learning-rate grid (and s for SVGD) chosen on validation error with
seed 0; then 5 seeds with the chosen setting. The paper's step-decay shape: α until 27% of
the steps, α/2 until 60%, α/10 after. Writes a table, JSON and a PNG of test error vs step.

    python -m benchmarks.convergence [--quick]
"""
from __future__ import annotations

import os

import keras
import numpy as np
import tensorflow as tf

import svgd_rewrite
from benchmarks.common import parser, print_table, write_results
from fixtures import keras_models

GRID = {"sgd": [{"lr": a} for a in (0.01, 0.03, 0.1)],
        "rmsprop": [{"lr": a} for a in (3e-4, 1e-3, 3e-3)],
        "adam": [{"lr": a} for a in (3e-4, 1e-3, 3e-3)],
        "svgd": [{"lr": a, "s": s} for a in (0.01, 0.03, 0.1) for s in (0.01, 0.1)]}
QUICK_GRID = {"sgd": [{"lr": 0.03}], "rmsprop": [{"lr": 1e-3}], "adam": [{"lr": 1e-3}],
              "svgd": [{"lr": 0.03, "s": 0.1}]}
BATCH = 32


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


def run(kind: str, method: str, config: dict, seed: int, steps: int, data, eval_every: int):
    (x_train, y_train), evaluation = data[0], data[1:]
    model = build_model(kind, seed)
    lr = schedule(config["lr"], steps)
    opt = {"sgd": keras.optimizers.SGD, "svgd": keras.optimizers.SGD,
           "rmsprop": keras.optimizers.RMSprop, "adam": keras.optimizers.Adam}[method](lr)
    step = keras_models.train_step(model, opt, l1=1e-4 if kind == "mlp" else 0.0, batch=BATCH)
    if method == "svgd":
        step = svgd_rewrite.rewrite(step, scale=config["s"])
    rng = np.random.default_rng(seed)
    curve = []

    def errors():
        return [float(np.mean(np.argmax(model(x, training=False), axis=1) != y))
                for x, y in evaluation]

    for i in range(1, steps + 1):
        idx = rng.choice(len(x_train), BATCH, replace=False)
        loss = step(tf.constant(x_train[idx]), tf.constant(y_train[idx]))
        if i % eval_every == 0 or i == steps:
            val, test = errors()
            curve.append({"step": i, "val_error": val, "test_error": test,
                          "loss": float(loss)})
    return curve


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    steps, seeds, grid, eval_every = ((300, 2, QUICK_GRID, 100) if args.quick
                                      else (3000, 5, GRID, 100))
    data = load_data()
    results, rows = {}, []
    for kind in ("mlp", "cnn"):
        results[kind] = {}
        for method, configs in grid.items():
            seed0 = [run(kind, method, c, 0, steps, data, eval_every) for c in configs]
            scored = [(curve[-1]["val_error"], k) for k, curve in enumerate(seed0)]
            best = configs[min(scored)[1]]
            curves = [seed0[min(scored)[1]]] + [run(kind, method, best, seed, steps, data,
                                                    eval_every) for seed in range(1, seeds)]
            final = [c[-1]["test_error"] for c in curves]
            results[kind][method] = {
                "config": best, "validation_errors": {str(configs[k]): v for v, k in scored},
                "test_error_mean": float(np.mean(final)), "test_error_std": float(np.std(final)),
                "steps": [p["step"] for p in curves[0]],
                "test_error_curve_mean": [float(np.mean([c[j]["test_error"] for c in curves]))
                                          for j in range(len(curves[0]))]}
            r = results[kind][method]
            rows.append([kind, method, str(best), f"{100 * r['test_error_mean']:.2f} ± "
                         f"{100 * r['test_error_std']:.2f}"])
    print_table(["model", "method", "chosen on validation", "test error % (mean ± std)"], rows)
    png = plot(results, args.out, args.quick)
    results["settings"] = {"steps": steps, "seeds": seeds, "batch": BATCH,
                           "schedule": "α, α/2 from 27%, α/10 from 60% of the steps",
                           "split": "60/20/20 stratified, random_state=0",
                           "png": os.path.basename(png)}
    print("wrote", write_results(args.out, "convergence", results, args.quick), "and", png)


def plot(results: dict, out_dir: str, quick: bool) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, kind in zip(axes, ("mlp", "cnn")):
        for method, r in results[kind].items():
            label = {"svgd": "SVGD (rewritten SGD step)", "sgd": "SGD", "rmsprop": "RMSprop",
                     "adam": "Adam"}[method]
            ax.plot(r["steps"], [100 * e for e in r["test_error_curve_mean"]], label=label)
        ax.set_title(f"digits, {'paper-shape MLP' if kind == 'mlp' else 'small CNN'}")
        ax.set_xlabel("step")
        ax.set_ylabel("test error % (mean over seeds)")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"convergence{'_quick' if quick else ''}.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    main()
