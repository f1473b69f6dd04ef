"""Print the README's Performance tables (Markdown) from benchmarks/results/*.json, or put
them into the README between its ``<!-- begin NAME -->`` / ``<!-- end NAME -->`` markers.

    python -m benchmarks.tables [--readme README.md]
"""
from __future__ import annotations

import argparse
import json
import os
import re

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


ORDER = ["mnist_mlp", "cifar_vgg", "resnet20", "lstm", "gru", "simple_rnn"]


def _ordered(results: dict) -> list[tuple[str, dict]]:
    """Results in the README's order (the paper's models, then recurrent ones)."""
    return sorted(results.items(), key=lambda kv: (ORDER.index(kv[0]) if kv[0] in ORDER
                                                   else len(ORDER), kv[0]))


def _ms(x: float) -> str:
    return f"{x:.3g}"


def _ratio(x: float) -> str:
    return f"{x:.3f}"


def _source(payload: dict, command: str) -> str:
    m = payload["machine"]
    return (f"`{command}`, {payload['date']}: {m['cpus']} CPU cores, TensorFlow "
            f"{m['tensorflow']}, Python {m['python']}")


def step_time(p: dict) -> str:
    res = p["results"]
    out = [_source(p, "python -m benchmarks.step_time"), "",
           _table(["model", "batch", "SGD ms", "re-emitted", "SVGD full", "SVGD channel",
                   "SVGD auto", "peer", "Adam", "SVGD/re-emitted", "SVGD/constants",
                   "SVGD/peer"],
                  [[m, str(r["batch"]), _ms(r["sgd_ms"]), _ratio(r["baseline_over_sgd"]),
                    _ratio(r["svgd_over_sgd"]), _ratio(r["svgd_channel_over_sgd"]),
                    _ratio(r["svgd_auto_over_sgd"]), _ratio(r["peer_over_sgd"]),
                    _ratio(r["adam_over_sgd"]), _ratio(r["svgd_over_baseline"]),
                    _ratio(r["svgd_over_constants"]) if "svgd_over_constants" in r else "–",
                    _ratio(r["svgd_over_peer"])] for m, r in _ordered(res)]), "",
           "With `jit_compile=True` (XLA) on every step (ratios to the XLA SGD step):", "",
           _table(["model", "SGD ms", "SVGD full", "SVGD channel", "peer", "Adam", "SVGD/peer"],
                  [[m, _ms(r["sgd_xla_ms"]), _ratio(r["svgd_xla_over_sgd"]),
                    _ratio(r["svgd_channel_xla_over_sgd"]), _ratio(r["peer_xla_over_sgd"]),
                    _ratio(r["adam_xla_over_sgd"]), _ratio(r["svgd_xla_over_peer_xla"])]
                   for m, r in _ordered(res)]), "",
           "Nodes per site after Grappler (the step's graph after TensorFlow's default "
           "optimizations, minus the plain step's, per site):", "",
           _table(["model", "SVGD", "identity transform", "peer"],
                  [[m, f"{r['nodes_per_site']['svgd']:.1f}",
                    f"{r['nodes_per_site']['identity']:.1f}",
                    f"{r['nodes_per_site']['peer']:.1f}"] for m, r in _ordered(res)])]
    return "\n".join(out)


def recurrent(p: dict) -> str:
    return "\n".join([_source(p, "python -m benchmarks.recurrent_step_time"), "", _table(
        ["model", "batch × timesteps", "sites", "SGD ms", "SVGD ms", "Adam ms", "SVGD/SGD",
         "Adam/SGD", "SVGD/Adam"],
        [[m, f"{r['batch']} × {r['length']}", str(r["sites"]), _ms(r["sgd_ms"]),
          _ms(r["svgd_ms"]), _ms(r["adam_ms"]), _ratio(r["svgd_over_sgd"]),
          _ratio(r["adam_over_sgd"]), _ratio(r["svgd_over_adam"])]
         for m, r in _ordered(p["results"])])])


def fit_throughput(p: dict) -> str:
    return "\n".join([_source(p, "python -m benchmarks.fit_throughput"), "", _table(
        ["model", "batch", "SGD steps/s", "SVGD steps/s", "SVGD/SGD time"],
        [[m, str(r["batch"]), f"{r['sgd_steps_per_s']:.3g}", f"{r['svgd_steps_per_s']:.3g}",
          _ratio(r["svgd_over_sgd_time"])] for m, r in _ordered(p["results"])])])


def scaling(p: dict) -> str:
    rows = []
    for m, r in _ordered(p["results"]):
        for k in (1, 2):
            rows.append([m, str(r["global_batch"]), str(k), _ms(r[f"sgd_{k}r_ms"]),
                         _ms(r[f"svgd_{k}r_ms"]), _ms(r[f"adam_{k}r_ms"]),
                         _ratio(r[f"svgd_over_sgd_{k}r"]), _ratio(r[f"adam_over_sgd_{k}r"]),
                         f"+{r['svgd_extra_floats']:,} "
                         f"({r['svgd_extra_floats'] / r['gradient_floats']:.1%})"])
    return "\n".join([_source(p, "python -m benchmarks.scaling"), "", _table(
        ["model", "global batch", "replicas", "SGD ms", "SVGD ms", "Adam ms", "SVGD/SGD",
         "Adam/SGD", "SVGD all-reduce floats"], rows)])


def optimizer_state(p: dict) -> str:
    rows = []
    for m, r in _ordered(p["results"]):
        def cell(method):
            floats = r[method]["floats"]
            return f"{floats:,} ({floats / r['params']:.3g}×)"
        rows.append([m, f"{r['params']:,}", cell("svgd_full"), cell("svgd_channel"),
                     cell("rmsprop"), cell("adam")])
    return "\n".join([_source(p, "python -m benchmarks.memory"), "", _table(
        ["model", "params", "SVGD full", "SVGD channel", "RMSprop", "Adam"], rows)])


def rewrite_time(p: dict) -> str:
    res = p["results"]
    resnets = [k for k in res if k.startswith("resnet")]
    trees = sorted((k for k in res if k.startswith("tree_depth")),
                   key=lambda k: int(k.removeprefix("tree_depth")))
    out = [_source(p, "python -m benchmarks.rewrite_time"), "", _table(
        ["model", "nodes", "sites", "trace s", "rewrite s", "rewrite/trace", "µs per node"],
        [[m, f"{res[m]['nodes']:,}", str(res[m]["sites"]), f"{res[m]['trace_s']:.2f}",
          f"{res[m]['rewrite_s']:.2f}", _ratio(res[m]["rewrite_over_trace"]),
          f"{res[m]['rewrite_us_per_node']:.0f}"] for m in resnets]), "",
        _table(["nested tree depth", "inlined nodes", "sites", "trace s", "rewrite s",
                "nodes ×", "time ×", "µs per node"],
               [[k.removeprefix("tree_depth"), f"{res[k]['inlined_nodes']:,}",
                 f"{res[k]['sites']:,}", f"{res[k]['trace_s']:.3g}", f"{res[k]['rewrite_s']:.3g}",
                 f"{res[k]['node_ratio']:.2f}" if "node_ratio" in res[k] else "",
                 f"{res[k]['time_ratio']:.2f}" if "time_ratio" in res[k] else "",
                 f"{res[k]['rewrite_us_per_node']:.0f}"] for k in trees])]
    memory = res.get("memory")
    if memory:
        rows = []
        for k, r in memory.items():
            if not isinstance(r, dict):
                continue
            rows.append([k, f"{r['input_mib']:.1f}", f"{r['seconds']:.1f}", f"{r['peak_mib']:.0f}",
                         f"{r['peak_ratio_to_previous']:.2f}" if "peak_ratio_to_previous" in r
                         else "",
                         f"{r['time_ratio_to_previous']:.2f}" if "time_ratio_to_previous" in r
                         else ""])
        out += ["", f"Command line on TF1 graphs, each in a fresh process (a 1-site graph peaks "
                f"at {memory['baseline_mib']:.0f} MiB: TensorFlow's own footprint):", "",
                _table(["TF1 graph", "input MiB", "seconds", "peak MiB", "peak × previous",
                        "time × previous"], rows)]
    return "\n".join(out)


def _ties(kind: dict, paired: dict) -> int:
    a, b = kind[paired["svgd"]]["test_errors"], kind[paired["other"]]["test_errors"]
    return sum(abs(x - y) < 1e-9 for x, y in zip(a, b))


def convergence(p: dict) -> str:
    res = p["results"]
    labels = {"sgd": "SGD", "rmsprop": "RMSprop", "adam": "Adam", "svgd": "SVGD",
              "svgd_momentum": "SVGD → momentum 0.9", "svgd_adam": "SVGD → Adam",
              "svgd_channel": "SVGD (channel)"}
    rows, paired = [], []
    for kind in ("mlp", "cnn"):
        for method, r in res[kind].items():
            if method == "paired":
                continue
            config = ", ".join(f"{k} {v:g}" for k, v in r["config"].items())
            if r.get("at_grid_edge"):
                config += " (edge: " + ", ".join(r["at_grid_edge"]) + ")"
            rows.append([kind.upper(), labels[method], config,
                         str(r.get("configurations_tried", "")),
                         f"{100 * r['test_error_mean']:.2f} ± {100 * r['test_error_std']:.2f}",
                         f"{r['ms_per_step']:.2f}" if "ms_per_step" in r else ""])
        q = res[kind].get("paired")
        if q is None:
            continue
        paired.append(f"- {kind.upper()}: {labels[q['svgd']]} − {labels[q['other']]} = "
                      f"{100 * q['mean_difference']:+.2f} ± {100 * q['std_difference']:.2f} "
                      f"points per seed; SVGD better on {q['svgd_better_seeds']} of "
                      f"{q['seeds']} seeds, tied on {_ties(res[kind], q)}; paired t-test "
                      f"p = {q['p_value']:.3f}")
    return "\n".join([_source(p, "python -m benchmarks.convergence"), "", _table(
        ["model", "method", "chosen on validation", "configs tried", "test error % (5 seeds)",
         "ms/step"], rows), "", *paired])


def diagnostics_cost(p: dict) -> str:
    r = p["results"]["mnist_mlp"]
    labels = {"none": "none (Keras's own function both ways: the noise floor)",
              "every_step": "every step (the histograms every 10 steps, the default)",
              "every_step_histograms_every_step": "every step, the histograms too",
              "every_step_ratio_every_10": "every step, the ratio every 10 steps",
              "every_10": "every 10 steps", "every_100": "every 100 steps"}
    return "\n".join([_source(p, "python -m benchmarks.diagnostics_cost"), "", _table(
        ["logging (paper MLP, batch 32)", "ms/step with", "ms/step without",
         "× without the callback (same models)"],
        [[label, f"{r['ms_per_step'][m]:.2f}", f"{r['ms_per_step_without'][m]:.2f}",
          _ratio(r["over_without"][m])]
         for m, label in labels.items() if m in r["ms_per_step"]])])


SECTIONS = {"step_time": step_time, "diagnostics_cost": diagnostics_cost, "recurrent_step_time": recurrent,
            "fit_throughput": fit_throughput, "scaling": scaling, "memory": optimizer_state,
            "rewrite_time": rewrite_time, "convergence": convergence}


def rendered() -> dict[str, str]:
    """Each section's Markdown, for the results that exist."""
    return {name: render(payload) for name, render in SECTIONS.items()
            if (payload := _load(name)) is not None}


def fill_readme(text: str, tables: dict[str, str]) -> str:
    """``text`` with each ``<!-- begin NAME -->…<!-- end NAME -->`` block holding its table."""
    def put(match: re.Match) -> str:
        name = match.group(1)
        body = tables.get(name, match.group(2).strip("\n"))
        return f"<!-- begin {name} -->\n{body}\n<!-- end {name} -->"

    return re.sub(r"<!-- begin (\w+) -->\n(.*?)<!-- end \1 -->", put, text, flags=re.S)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--readme", help="rewrite the tables inside this file's markers")
    args = p.parse_args()
    tables = rendered()
    if args.readme:
        with open(args.readme) as f:
            text = f.read()
        with open(args.readme, "w") as f:
            f.write(fill_readme(text, tables))
        return
    for name, table in tables.items():
        print(f"<!-- {name} -->\n{table}\n")


if __name__ == "__main__":
    main()
