"""The diagnostics taps (``svgd_rewrite.probe``): which tensors of a rewritten step give θ's
virtual and plain gradient, the norm ratio from them (numpy as the reference), and the
read-only probe's refusal to write."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import node_def_pb2

from svgd_rewrite.edits import EditLog, Rerouted, Scaled
from svgd_rewrite.probe import Tap, Taps, build_probe, taps_of


def _matmul(name: str, a: str, b: str, transpose_a: bool) -> node_def_pb2.NodeDef:
    node = node_def_pb2.NodeDef(name=name, op="MatMul", input=[a, b, "^ctrl"])
    node.attr["T"].type = tf.float32.as_datatype_enum
    node.attr["transpose_a"].b = transpose_a
    node.attr["transpose_b"].b = False
    return node


def _graph(*nodes):
    graph = tf.compat.v1.GraphDef()
    graph.node.extend(nodes)
    return graph


def test_taps_name_the_gradients_of_both_forms():
    """A pre-scaled application taps P's output and P's data inputs with g in ĝ's slot
    (control inputs dropped); a post-scaled one its target and scaled copy."""
    p = _matmul("P", "x", "g_hat", transpose_a=True)
    graph = _graph(p, node_def_pb2.NodeDef(name="target", op="MatMul"),
                   node_def_pb2.NodeDef(name="scaled", op="Mul"))
    edits = EditLog(rerouted=[Rerouted(site=0, application=0, node="P", slot=1, old="g",
                                       new="g_hat")],
                    scaled=[Scaled(site=1, target="target", scaled="scaled")])
    taps = taps_of(graph, edits)
    (pre,), (post,) = taps.sites[0], taps.sites[1]
    assert (pre.virtual, pre.plain, pre.inputs) == ("P:0", None, ("x:0", "g:0"))
    assert (post.virtual, post.plain) == ("scaled:0", "target:0")
    assert taps.names() == ["P:0", "x:0", "g:0", "scaled:0", "target:0"]
    assert taps_of(graph, EditLog()) is None


def test_ratio_reruns_p_on_the_plain_gradient_and_sums_applications():
    rng = np.random.default_rng(0)
    x, g, x2, g2 = (rng.normal(size=s).astype(np.float32)
                    for s in ((8, 5), (8, 3), (8, 5), (8, 3)))
    virtual, virtual2 = rng.normal(size=(5, 3)), rng.normal(size=(5, 3))
    taps = Taps({0: [Tap(virtual="v:0", node=_matmul("P", "x", "gh", True),
                         inputs=("x:0", "g:0")),
                     Tap(virtual="v2:0", node=_matmul("P2", "x2", "gh2", True),
                         inputs=("x2:0", "g2:0"))],
                 1: [Tap(virtual="s:0", plain="t:0")]})
    values = {"v:0": virtual, "v2:0": virtual2, "x:0": x, "g:0": g, "x2:0": x2, "g2:0": g2,
              "s:0": 2 * g, "t:0": g}
    values = {k: tf.constant(v, tf.float32) for k, v in values.items()}
    ratios = tf.function(lambda: taps.ratios(values))()
    want = np.sqrt((np.sum(virtual ** 2) + np.sum(virtual2 ** 2))
                   / (np.sum((x.T @ g) ** 2) + np.sum((x2.T @ g2) ** 2)))
    assert float(ratios[0]) == pytest.approx(want, rel=1e-5)
    assert float(ratios[1]) == pytest.approx(2.0, rel=1e-6)


def test_the_probe_is_refused_when_its_cut_would_write_a_variable():
    v = tf.Variable(1.0)

    @tf.function
    def f(x):
        v.assign_add(1.0)
        return tf.identity(x * v.read_value(), name="out")

    graph = f.get_concrete_function(tf.TensorSpec([], tf.float32)).graph.as_graph_def()
    out = next(n.name for n in graph.node if n.name.startswith("out"))
    assert build_probe(graph, Taps({0: [Tap(virtual=f"{out}:0", plain="x:0")]})) is None
    cut = build_probe(graph, Taps({0: [Tap(virtual="x:0", plain="x:0")]}))
    assert [n.name for n in cut.node] == ["x"]
