"""Step time, side by side in one process: SGD, the SGD step re-emitted without surgery (the
fair baseline for the rewrite's own cost), the rewritten SVGD step at full, channel and auto
granularity, the full SVGD step with s, ρ, ε as constants in its graph (the fair baseline for
feeding them as state each call), a hand-written ``tf.custom_gradient`` SVGD (``benchmarks.peer_svgd``), Adam —
and SGD, SVGD (full and channel), the peer and Adam with ``jit_compile=True`` (XLA). Also the
nodes each SVGD site adds after Grappler, for the rewrite, the peer and the identity
transform.

All steps are traced and warmed up first, then run interleaved round-robin; each entry is the
median over repetitions of the mean time of a few consecutive steps.

    python -m benchmarks.step_time [--quick]
"""
from __future__ import annotations

from dataclasses import replace

import tensorflow as tf
from tensorflow.core.framework import graph_pb2

import svgd_rewrite
from benchmarks.common import (MODELS, OPTIMIZERS, interleaved_ms, parser, print_table,
                               random_batch, write_results)
from benchmarks.peer_svgd import make_peer
from fixtures import keras_models
from svgd_rewrite.frontend import rewrite_loaded
from svgd_rewrite.options import make_options
from svgd_rewrite.step import SVGDStep
from svgd_rewrite.load import load_step
from svgd_rewrite.surgery import Rewritten

SCALES = {"mnist_mlp": 0.1, "cifar_vgg": 0.001, "resnet20": 0.01}  # the paper's s
METHODS = ("sgd", "baseline", "svgd", "svgd_constants", "svgd_channel", "svgd_auto", "peer",
           "adam",
           "sgd_xla", "svgd_xla", "svgd_channel_xla", "peer_xla", "adam_xla")


def reemitted(step) -> SVGDStep:
    """The step through the same load (inlining) and emit path, without any site."""
    loaded = load_step(step)
    return SVGDStep(loaded, Rewritten(graph_def=loaded.graph_def, accumulators=[]), report=None)


def with_constants(step, scale: float) -> SVGDStep:
    """The step rewritten at full granularity with s, ρ, ε as constants in the graph instead
    of inputs fed from the state each call."""
    loaded = load_step(step)
    rewritten, report = rewrite_loaded(loaded, make_options(scale=scale))
    graph_def = graph_pb2.GraphDef()
    graph_def.CopyFrom(rewritten.graph_def)
    values = {name: float(getattr(rewritten.options, h))
              for h, name in rewritten.hyperparameters.items()}
    for node in graph_def.node:
        if node.name in values:
            node.op = "Const"
            node.ClearField("input")
            node.attr.clear()
            node.attr["dtype"].type = tf.float32.as_datatype_enum
            node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(values[node.name],
                                                                    tf.float32))
    return SVGDStep(loaded, replace(rewritten, graph_def=graph_def, hyperparameters={}),
                    report)


def build_steps(name: str, methods=METHODS) -> dict:
    builder, _ = MODELS[name]
    scale = SCALES[name]
    steps = {}
    for method in methods:
        model = builder(0)
        base = method.removesuffix("_xla")
        xla = True if method.endswith("_xla") else None
        if base == "peer":
            make_peer(model, scale=scale)
        opt = OPTIMIZERS["adam" if base == "adam" else "sgd"]()
        step = keras_models.train_step(model, opt, l1=0, jit_compile=xla)
        if base == "svgd_constants":
            step = with_constants(step, scale)
        elif base.startswith("svgd"):
            granularity = {"svgd": "full", "svgd_channel": "channel",
                           "svgd_auto": "auto"}[base]
            step = svgd_rewrite.rewrite(step, scale=scale, granularity=granularity)
        elif base == "baseline":
            step = reemitted(step)
        steps[method] = step
    return steps


def grappler_nodes(step) -> int:
    """Nodes of the step's graph after TensorFlow's default Grappler passes."""
    import tensorflow as tf
    from tensorflow.python.grappler import tf_optimizer

    function = step.function if isinstance(step, SVGDStep) else step
    concrete = function.get_concrete_function()
    graph = concrete.graph
    meta = tf.compat.v1.train.export_meta_graph(graph_def=graph.as_graph_def(), graph=graph)
    fetch = meta.collection_def["train_op"].node_list.value
    for t in concrete.outputs:
        fetch.append(t.name)
    config = tf.compat.v1.ConfigProto()
    optimized = tf_optimizer.OptimizeGraph(config, meta)
    count = len(optimized.node)
    for f in optimized.library.function:
        count += len(f.node_def)
    return count


def nodes_per_site(name: str) -> dict:
    """(optimized nodes − those of the re-emitted SGD step) / sites, for the rewrite (default
    and identity transform) and the peer."""
    builder, _ = MODELS[name]
    sgd = keras_models.train_step(builder(0), OPTIMIZERS["sgd"](), l1=0)
    base = grappler_nodes(reemitted(sgd))
    out = {}
    for label, kwargs in (("svgd", {}), ("identity", {"transform": "identity"})):
        step = svgd_rewrite.rewrite(keras_models.train_step(builder(0), OPTIMIZERS["sgd"](),
                                                            l1=0), scale=SCALES[name], **kwargs)
        out[label] = (grappler_nodes(step) - base) / len(step.report.sites)
    model = builder(0)
    layers = len(make_peer(model, scale=SCALES[name]))
    peer = keras_models.train_step(model, OPTIMIZERS["sgd"](), l1=0)
    out["peer"] = (grappler_nodes(peer) - grappler_nodes(sgd)) / layers
    return out


def measure(name: str, reps: int, inner: int) -> dict:
    _, batch = MODELS[name]
    steps = build_steps(name)
    x, y = random_batch(MODELS[name][0](0), batch)
    ms = interleaved_ms({m: (lambda step=steps[m]: step(x, y)) for m in METHODS}, reps, inner)
    out = {"batch": batch, "scale": SCALES[name], "repetitions": reps,
           "steps_per_repetition": inner}
    out.update({f"{m}_ms": ms[m] for m in METHODS})
    for m in METHODS:
        if m not in ("sgd", "sgd_xla"):
            ref = "sgd_xla" if m.endswith("_xla") else "sgd"
            out[f"{m}_over_sgd"] = ms[m] / ms[ref]
    out["svgd_over_baseline"] = ms["svgd"] / ms["baseline"]
    out["svgd_over_constants"] = ms["svgd"] / ms["svgd_constants"]
    out["svgd_over_peer"] = ms["svgd"] / ms["peer"]
    out["svgd_xla_over_peer_xla"] = ms["svgd_xla"] / ms["peer_xla"]
    out["nodes_per_site"] = nodes_per_site(name)
    return out


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    reps, inner = (3, 2) if args.quick else (15, 5)
    names = ("mnist_mlp",) if args.quick else tuple(MODELS)
    results = {name: measure(name, reps, inner) for name in names}
    print_table(["model", "SGD ms", "re-emitted", "SVGD full", "SVGD channel", "SVGD auto",
                 "peer", "Adam", "SVGD/re-emitted", "SVGD/constants", "SVGD/peer"],
                [[n, r["sgd_ms"], r["baseline_over_sgd"], r["svgd_over_sgd"],
                  r["svgd_channel_over_sgd"], r["svgd_auto_over_sgd"], r["peer_over_sgd"],
                  r["adam_over_sgd"], r["svgd_over_baseline"], r["svgd_over_constants"],
                  r["svgd_over_peer"]]
                 for n, r in results.items()])
    print("(SVGD…Adam columns: ratio to SGD)\n")
    print_table(["model (XLA)", "SGD ms", "SVGD full", "SVGD channel", "peer", "Adam",
                 "SVGD/peer"],
                [[n, r["sgd_xla_ms"], r["svgd_xla_over_sgd"], r["svgd_channel_xla_over_sgd"],
                  r["peer_xla_over_sgd"], r["adam_xla_over_sgd"], r["svgd_xla_over_peer_xla"]]
                 for n, r in results.items()])
    print()
    print_table(["model", "nodes/site SVGD", "identity", "peer"],
                [[n, r["nodes_per_site"]["svgd"], r["nodes_per_site"]["identity"],
                  r["nodes_per_site"]["peer"]] for n, r in results.items()])
    print("wrote", write_results(args.out, "step_time", results, args.quick))


if __name__ == "__main__":
    main()
