"""Rewrite time vs trace time for CIFAR ResNets of growing depth, and for steps that call a
tree of nested tf.functions (inlining) of growing size (linear scaling checks).

trace: ``get_concrete_function`` of the train step; rewrite: analysis + surgery + emitting a
callable (``svgd_rewrite.rewrite`` on the traced step, then tracing the rewritten function for
the ResNets; ``svgd_rewrite.rewrite`` alone for the nested trees). Both on the same step, in
one process.

    python -m benchmarks.rewrite_time [--quick]
"""
from __future__ import annotations

import time

import svgd_rewrite
from benchmarks.common import parser, print_table, write_results
from fixtures import keras_models
from fixtures.nested_calls import tree_step


def measure(depth: int) -> dict:
    step = keras_models.train_step(keras_models.resnet(depth), l1=0)
    start = time.perf_counter()
    concrete = step.get_concrete_function()
    trace = time.perf_counter() - start
    start = time.perf_counter()
    svgd = svgd_rewrite.rewrite(concrete)
    svgd.function.get_concrete_function()
    rewrite = time.perf_counter() - start
    nodes = len(concrete.graph.as_graph_def().node)
    return {"nodes": nodes, "sites": len(svgd.report.sites), "trace_s": trace,
            "rewrite_s": rewrite, "rewrite_over_trace": rewrite / trace,
            "rewrite_us_per_node": rewrite / nodes * 1e6}


def measure_nested(depth: int) -> dict:
    step, _ = tree_step(depth)
    start = time.perf_counter()
    concrete = step.get_concrete_function()
    trace = time.perf_counter() - start
    start = time.perf_counter()
    svgd = svgd_rewrite.rewrite(concrete)
    rewrite = time.perf_counter() - start
    nodes = len(svgd.original_graph_def.node)
    return {"inlined_nodes": nodes, "sites": len(svgd.report.sites), "trace_s": trace,
            "rewrite_s": rewrite, "rewrite_us_per_node": rewrite / nodes * 1e6}


def nested_table(depths) -> dict:
    """Rewrite time of nested-call trees; each row also gives the time ratio to the row
    before over its node-count ratio (1.0 = linear)."""
    results = {f"tree_depth{d}": measure_nested(d) for d in depths}
    rows, prev = [], None
    for name, r in results.items():
        if prev is not None:
            r["time_ratio"] = r["rewrite_s"] / prev["rewrite_s"]
            r["node_ratio"] = r["inlined_nodes"] / prev["inlined_nodes"]
        rows.append([name, r["inlined_nodes"], r["sites"], r["trace_s"], r["rewrite_s"],
                     r.get("node_ratio", float("nan")), r.get("time_ratio", float("nan")),
                     r["rewrite_us_per_node"]])
        prev = r
    print_table(["nested tree", "inlined nodes", "sites", "trace s", "rewrite s",
                 "nodes ×", "time ×", "µs/node"], rows)
    return results


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    depths = (20, 32, 44) if args.quick else (20, 56, 110)
    results = {f"resnet{d}": measure(d) for d in depths}
    per_node = [r["rewrite_us_per_node"] for r in results.values()]
    summary = {"per_node_max_over_min": max(per_node) / min(per_node)}
    print_table(["model", "nodes", "sites", "trace s", "rewrite s", "rewrite/trace", "µs/node"],
                [[n, r["nodes"], r["sites"], r["trace_s"], r["rewrite_s"],
                  r["rewrite_over_trace"], r["rewrite_us_per_node"]] for n, r in results.items()])
    print(f"time per node, max/min over the depths: {summary['per_node_max_over_min']:.2f}")
    results.update(nested_table((5, 6) if args.quick else (7, 8, 9, 10)))
    print("wrote", write_results(args.out, "rewrite_time", {**results, "summary": summary},
                                 args.quick))


if __name__ == "__main__":
    main()
