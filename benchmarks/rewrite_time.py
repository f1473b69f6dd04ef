"""Rewrite time vs trace time for CIFAR ResNets of growing depth (linear scaling check).

trace: ``get_concrete_function`` of the Keras train step; rewrite: analysis + surgery +
emitting a callable (``svgd_rewrite.rewrite`` on the traced step, then tracing the rewritten
function). Both on the same step, in one process.

    python -m benchmarks.rewrite_time [--quick]
"""
from __future__ import annotations

import time

import svgd_rewrite
from benchmarks.common import parser, print_table, write_results
from fixtures import keras_models


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
    print("wrote", write_results(args.out, "rewrite_time", {**results, "summary": summary},
                                 args.quick))


if __name__ == "__main__":
    main()
