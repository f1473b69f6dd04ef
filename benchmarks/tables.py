"""Print the README's Performance tables (Markdown) from benchmarks/results/*.json.

    python -m benchmarks.tables
"""
from __future__ import annotations

import json
import os

from benchmarks.common import RESULTS


def _load(name: str) -> dict | None:
    path = os.path.join(RESULTS, f"{name}.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    step = _load("step_time")
    if step:
        print(_table(["model", "batch", "SGD ms", "SVGD ms", "RMSprop ms", "Adam ms", "SVGD/SGD",
                      "RMSprop/SGD", "Adam/SGD"],
                     [[m, str(r["batch"]), f"{r['sgd_ms']:.1f}", f"{r['svgd_ms']:.1f}",
                       f"{r['rmsprop_ms']:.1f}", f"{r['adam_ms']:.1f}",
                       f"{r['svgd_over_sgd']:.3f}", f"{r['rmsprop_over_sgd']:.3f}",
                       f"{r['adam_over_sgd']:.3f}"] for m, r in step["results"].items()]))
        print()
    memory = _load("memory")
    if memory:
        rows = []
        for m, r in memory["results"].items():
            for method, label in (("svgd_full", "SVGD full"), ("svgd_channel", "SVGD channel"),
                                  ("rmsprop", "RMSprop"), ("adam", "Adam")):
                rows.append([m, f"{r['params']:,}", label, f"{r[method]['floats']:,}",
                             f"{r[method]['bytes']:,}", f"{r[method]['floats'] / r['params']:.3f}"])
        print(_table(["model", "params", "method", "state floats", "state bytes", "× params"],
                     rows))
        print()
    rewrite = _load("rewrite_time")
    if rewrite:
        res = rewrite["results"]
        print(_table(["model", "nodes", "sites", "trace s", "rewrite s", "rewrite/trace",
                      "µs per node"],
                     [[m, f"{r['nodes']:,}", str(r["sites"]), f"{r['trace_s']:.2f}",
                       f"{r['rewrite_s']:.2f}", f"{r['rewrite_over_trace']:.2f}",
                       f"{r['rewrite_us_per_node']:.0f}"]
                      for m, r in res.items() if m != "summary"]))
        print(f"\ntime per node, max/min: {res['summary']['per_node_max_over_min']:.2f}\n")
    conv = _load("convergence")
    if conv:
        rows = []
        for kind in ("mlp", "cnn"):
            for method, r in conv["results"][kind].items():
                config = ", ".join(f"{k}={v:g}" for k, v in r["config"].items())
                rows.append([kind, method, config, f"{100 * r['test_error_mean']:.2f} ± "
                             f"{100 * r['test_error_std']:.2f}"])
        print(_table(["model", "method", "chosen on validation", "test error % (5 seeds)"], rows))


if __name__ == "__main__":
    main()
