"""Rewrite time vs trace time for CIFAR ResNets of growing depth, and for steps that call a
tree of nested tf.functions (inlining) of growing size (linear scaling checks); time and peak
memory of the command line on TF1 graphs with 1000/2000/4000 sites and on a GraphDef holding a
large constant (memory linear in the sites, a few times the input's size).

trace: ``get_concrete_function`` of the train step; rewrite: analysis + surgery + emitting a
callable (``svgd_rewrite.rewrite`` on the traced step, then tracing the rewritten function for
the ResNets; ``svgd_rewrite.rewrite`` alone for the nested trees). Both on the same step, in
one process.

    python -m benchmarks.rewrite_time [--quick]
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
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


# Peak RSS from VmHWM (per address space, reset by exec): ru_maxrss would inherit the high-water
# mark of the benchmark process that forked this one.
_PEAK = ("import re, sys, time; from svgd_rewrite.cli.main import main; t = time.time(); "
         "rc = main(sys.argv[1:] + ['-q']); "
         "hwm = re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1); "
         "print(rc, time.time() - t, hwm)")


def _cli_peak(*args) -> tuple[float, float]:
    """(seconds, peak RSS in MiB) of one command-line run in its own process."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, "-c", _PEAK, *map(str, args)], capture_output=True,
                          text=True, env=env, check=True)
    rc, seconds, kib = proc.stdout.split()[-3:]
    assert rc == "0", proc.stderr[-2000:]
    return float(seconds), int(kib) / 1024


def _chain_graph(n: int, path: str) -> None:
    """A TF1 training graph of n Dense-like layers (4×4 kernels, tanh), SGD: n sites."""
    import tensorflow as tf

    g = tf.Graph()
    with g.as_default():
        h = tf.compat.v1.placeholder(tf.float32, [None, 4], name="x")
        for i in range(n):
            w = tf.compat.v1.get_variable(f"w{i}", [4, 4],
                                          initializer=tf.compat.v1.glorot_uniform_initializer())
            h = tf.tanh(tf.matmul(h, w))
        tf.compat.v1.train.GradientDescentOptimizer(0.1).minimize(tf.reduce_mean(h * h),
                                                                    name="train")
    with open(path, "wb") as f:
        f.write(g.as_graph_def().SerializeToString())


def _large_constant_graph(megabytes: int, path: str) -> None:
    """A TF1 training graph holding a frozen table of ``megabytes`` MB (a Const) that the
    forward pass reads, and a trained 64×10 kernel."""
    import numpy as np
    import tensorflow as tf

    rows = megabytes * (1 << 20) // (64 * 4)
    g = tf.Graph()
    with g.as_default():
        table = tf.constant(np.ones((rows, 64), np.float32), name="frozen_table")
        ids = tf.compat.v1.placeholder(tf.int32, [None], name="ids")
        w = tf.compat.v1.get_variable("w", [64, 10])
        logits = tf.matmul(tf.gather(table, ids), w)
        tf.compat.v1.train.GradientDescentOptimizer(0.1).minimize(tf.reduce_mean(logits ** 2),
                                                                    name="train")
    with open(path, "wb") as f:
        f.write(g.as_graph_def().SerializeToString())


def memory_table(sites, megabytes) -> dict:
    """Time and peak RSS of ``svgd-rewrite GRAPH.pb OUT`` in a fresh process, per graph."""
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        _chain_graph(1, os.path.join(tmp, "tiny.pb"))
        _, baseline = _cli_peak(os.path.join(tmp, "tiny.pb"), os.path.join(tmp, "tiny_out"))
        results["baseline_mib"] = baseline
        for n in sites:
            path = os.path.join(tmp, f"chain{n}.pb")
            _chain_graph(n, path)
            seconds, peak = _cli_peak(path, os.path.join(tmp, f"out{n}"))
            results[f"sites{n}"] = {"sites": n, "input_mib": os.path.getsize(path) / 2**20,
                                    "seconds": seconds, "peak_mib": peak}
        for mb in megabytes:
            path = os.path.join(tmp, f"const{mb}.pb")
            _large_constant_graph(mb, path)
            seconds, peak = _cli_peak(path, os.path.join(tmp, f"const_out{mb}"))
            size = os.path.getsize(path) / 2**20
            results[f"constant{mb}mb"] = {"input_mib": size, "seconds": seconds,
                                         "peak_mib": peak,
                                         "peak_over_input": peak / size,
                                         "above_baseline_over_input": (peak - baseline) / size}
    keys = [f"sites{n}" for n in sites]
    for a, b in zip(keys, keys[1:]):
        results[b]["peak_ratio_to_previous"] = results[b]["peak_mib"] / results[a]["peak_mib"]
        results[b]["time_ratio_to_previous"] = results[b]["seconds"] / results[a]["seconds"]
    print_table(["TF1 graph", "input MiB", "seconds", "peak MiB", "peak ×", "time ×"],
                [[k, r["input_mib"], r["seconds"], r["peak_mib"],
                  r.get("peak_ratio_to_previous", float("nan")),
                  r.get("time_ratio_to_previous", float("nan"))]
                 for k, r in results.items() if isinstance(r, dict)])
    print(f"peak of a 1-site graph (TensorFlow's own baseline): {baseline:.0f} MiB")
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
    results["memory"] = memory_table((100, 200) if args.quick else (1000, 2000, 4000),
                                     (8,) if args.quick else (200,))
    print("wrote", write_results(args.out, "rewrite_time", {**results, "summary": summary},
                                 args.quick))


if __name__ == "__main__":
    main()
