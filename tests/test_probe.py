"""The diagnostics taps (``svgd_rewrite.probe``): which tensors of a rewritten step give θ's
virtual and plain gradient, the norm ratio the step computes from them (directly, and in the
Gram form; numpy as the reference), and the read-only probe's refusal to write."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import node_def_pb2

from svgd_rewrite.edits import EditLog, Rerouted, Scaled
import svgd_rewrite.probe
from svgd_rewrite.probe import RATIO, RATIO_SCOPE, Tap, Taps, build_probe, taps_of
from svgd_rewrite.shapes import infer_shapes


def _matmul(name: str, a: str, b: str, transpose_a: bool,
            transpose_b: bool = False) -> node_def_pb2.NodeDef:
    node = node_def_pb2.NodeDef(name=name, op="MatMul", input=[a, b, "^ctrl"])
    node.attr["T"].type = tf.float32.as_datatype_enum
    node.attr["transpose_a"].b = transpose_a
    node.attr["transpose_b"].b = transpose_b
    return node


def _placeholder(name: str, shape) -> node_def_pb2.NodeDef:
    node = node_def_pb2.NodeDef(name=name, op="Placeholder")
    node.attr["dtype"].type = tf.float32.as_datatype_enum
    node.attr["shape"].shape.CopyFrom(tf.TensorShape(shape).as_proto())
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
    assert taps_of(graph, EditLog()) is None


# A step's gradients, as MatMuls of a batch of B = 4: site 0 pre-scaled with two applications
# (P reads ĝ; P2 is θ's transposed kernel's gradient), site 1 post-scaled by f over the
# columns, site 2 over the rows (its kernel transposed).
B, M, N = 4, 6, 5
SHAPES = {"x": (B, M), "g": (B, N), "gh": (B, N), "x2": (B, M), "g2": (B, N), "gh2": (B, N),
          "x3": (B, M), "g3": (B, N), "f3": (N,), "x4": (B, M), "g4": (B, N), "f4": (M, 1)}


def _step_graph():
    nodes = [_placeholder(name, shape) for name, shape in SHAPES.items()]
    nodes.append(node_def_pb2.NodeDef(name="ctrl", op="NoOp"))
    nodes += [_matmul("P", "x", "gh", True), _matmul("P2", "gh2", "x2", True),
              _matmul("target3", "x3", "g3", True), _matmul("target4", "x4", "g4", False, True)]
    nodes[-1].input[:] = ["x4", "g4", "^ctrl"]  # x4ᵀ·g4 stored as (x4ᵀ)·(g4ᵀ)ᵀ: M×B · B×N
    nodes[-1].attr["transpose_a"].b, nodes[-1].attr["transpose_b"].b = True, False
    for k, f in ((3, "f3"), (4, "f4")):
        scaled = node_def_pb2.NodeDef(name=f"scaled{k}", op="Mul", input=[f"target{k}", f])
        scaled.attr["T"].type = tf.float32.as_datatype_enum
        nodes.append(scaled)
        reader = node_def_pb2.NodeDef(name=f"apply{k}", op="Identity", input=[f"scaled{k}"])
        reader.attr["T"].type = tf.float32.as_datatype_enum
        nodes.append(reader)
    graph = _graph(*nodes)
    edits = EditLog(rerouted=[Rerouted(site=0, application=0, node="P", slot=1, old="g",
                                       new="gh"),
                              Rerouted(site=0, application=1, node="P2", slot=0, old="g2",
                                       new="gh2")],
                    scaled=[Scaled(site=1, target="target3", scaled="scaled3"),
                            Scaled(site=2, target="target4", scaled="scaled4")])
    return graph, taps_of(graph, edits)


def _ratio(graph, values) -> np.ndarray:
    run = tf.function(lambda: tf.graph_util.import_graph_def(
        graph, input_map={f"{k}:0": tf.constant(v) for k, v in values.items()},
        return_elements=[RATIO], name="probe")[0])
    return run().numpy()


@pytest.mark.parametrize("forms", [(), ("columns",), ("gram", "columns")],
                         ids=["direct", "columns", "gram"])
def test_the_ratio_of_each_form_is_numpys(forms, monkeypatch):
    """Per site ‖virtual‖/‖plain‖ over its applications: P re-run on g for a pre-scaled one,
    f's columns or rows for a post-scaled one — reading both gradients, reading the plain one
    once (its norms along f's broadcast axes), or from the batch's Gram matrices (then no
    tapped gradient is read; f's rows or columns in the quadratic form of the other side's
    Gram matrix)."""
    monkeypatch.setattr(svgd_rewrite.probe, "FORMS", forms)
    rng = np.random.default_rng(0)
    v = {k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()}
    graph, taps = _step_graph()
    out = taps.with_ratio(graph, infer_shapes(graph, {}))
    want = [
        np.sqrt((np.sum((v["x"].T @ v["gh"]) ** 2) + np.sum((v["gh2"].T @ v["x2"]) ** 2))
                / (np.sum((v["x"].T @ v["g"]) ** 2) + np.sum((v["g2"].T @ v["x2"]) ** 2))),
        np.linalg.norm((v["x3"].T @ v["g3"]) * v["f3"]) / np.linalg.norm(v["x3"].T @ v["g3"]),
        np.linalg.norm((v["x4"].T @ v["g4"]) * v["f4"]) / np.linalg.norm(v["x4"].T @ v["g4"])]
    np.testing.assert_allclose(_ratio(out, v), want, rtol=1e-5)
    added = [n for n in out.node if n.name.startswith(RATIO_SCOPE)]
    read = sorted(n.input[0] for n in added if n.op in ("L2Loss", "EuclideanNorm")
                  and not n.input[0].startswith(RATIO_SCOPE))
    grams = [n for n in added if n.op == "MatMul" and "gram" in n.name]
    if forms == ():
        assert read == ["P2:0", "P:0", "scaled3:0", "scaled4:0", "target3:0", "target4:0"]
    elif forms == ("columns",):  # P re-run on g (pre-scaled); the targets read once
        assert read == ["P2:0", "P:0", "target3:0", "target4:0"] and not grams
        # the norms are vectors as they come; only f4 (M×1) is reshaped to one
        assert [n.input[0] for n in added if n.op == "Reshape"] == ["f4"]
    else:  # pre-scaled: per application 3 (an operand's shared by the virtual and the
        # plain one); post-scaled: 1, and f's side's rows or columns in its quadratic form
        quadratic = [n for n in added if n.op == "MatMul" and n.name.endswith("/quadratic")]
        assert read == [] and len(grams) == 3 + 3 + 1 + 1 and len(quadratic) == 2


@pytest.mark.parametrize("f_shape", [(1, N), (M, 1)], ids=["columns", "rows"])
def test_the_gram_form_reads_f_s_side_as_stored(f_shape):
    """G = a·cᵀ with a stored M×B and c stored N×B: f over G's columns reads c's rows, f over
    G's rows a's rows (the orientations the test above does not meet)."""
    graph = _graph(_placeholder("a", (M, B)), _placeholder("c", (N, B)),
                   _placeholder("f", f_shape), node_def_pb2.NodeDef(name="ctrl", op="NoOp"),
                   _matmul("target", "a", "c", False, True))
    scaled = node_def_pb2.NodeDef(name="scaled", op="Mul", input=["target", "f"])
    scaled.attr["T"].type = tf.float32.as_datatype_enum
    graph.node.append(scaled)
    out = Taps({0: [Tap(virtual="scaled:0", plain="target:0")]}).with_ratio(
        graph, infer_shapes(graph, {}))
    assert any(n.name.endswith("/quadratic") for n in out.node)
    rng = np.random.default_rng(1)
    v = {"a": rng.normal(size=(M, B)), "c": rng.normal(size=(N, B)), "f": rng.normal(size=f_shape)}
    v = {k: x.astype(np.float32) for k, x in v.items()}
    g = v["a"] @ v["c"].T
    np.testing.assert_allclose(_ratio(out, v), [np.linalg.norm(g * v["f"]) / np.linalg.norm(g)],
                               rtol=1e-5)


def test_a_gradient_read_is_read_by_the_step_after_its_norm(monkeypatch):
    """So that the step's own reader may still overwrite the gradient's buffer in place."""
    graph, taps = _step_graph()
    for forms, reads in (((), "L2Loss"), (("columns",), "EuclideanNorm")):
        monkeypatch.setattr(svgd_rewrite.probe, "FORMS", forms)
        out = {n.name: n for n in taps.with_ratio(graph, infer_shapes(graph, {})).node}
        waits = [i[1:] for i in out["scaled3"].input if i.startswith("^")]
        assert waits and all(out[w].op == reads and out[w].input[0] == "target3:0"
                             for w in waits)
        assert ([i for i in out["apply3"].input if i.startswith("^")] != []) == (forms == ())
        assert "^" not in "".join(out["P"].input[:2])


@pytest.mark.parametrize("shapes", [False, True], ids=["op-def", "inferred"])
def test_a_half_precision_gradient_is_normed_in_float32(shapes):
    """Its squares summed in float32 (1e3² overflows float16); its dtype from the inferred
    shapes or else from the op's definition."""
    graph = _graph(_placeholder("t", (4, 3)), _placeholder("f", (3,)))
    for name in ("t", "f"):
        graph.node[-1 if name == "f" else 0].attr["dtype"].type = tf.float16.as_datatype_enum
    scaled = node_def_pb2.NodeDef(name="s", op="Mul", input=["t", "f"])
    scaled.attr["T"].type = tf.float16.as_datatype_enum
    graph.node.append(scaled)
    taps = Taps({0: [Tap(virtual="s:0", plain="t:0")]})
    out = taps.with_ratio(graph, infer_shapes(graph, {}) if shapes else None)
    t = np.full((4, 3), 1e3, np.float16)
    ratio = tf.function(lambda: tf.graph_util.import_graph_def(
        out, input_map={"t:0": tf.constant(t), "f:0": tf.constant(np.float16([2, 2, 2]))},
        return_elements=[RATIO], name="probe")[0])()
    assert float(ratio[0]) == pytest.approx(2.0, rel=1e-3)


def test_a_gradient_of_unknown_batch_is_not_in_the_gram_form():
    graph, taps = _step_graph()
    for n in graph.node:
        if n.name in ("x3", "g3"):
            unknown_batch = tf.TensorShape([None, SHAPES[n.name][1]])
            n.attr["shape"].shape.CopyFrom(unknown_batch.as_proto())
    out = taps.with_ratio(graph, infer_shapes(graph, {}))
    assert [n.input[0] for n in out.node if n.op == "EuclideanNorm"] == ["target3:0"]
    assert not any(n.op == "MatMul" and n.input[0] == "x3" for n in out.node
                   if n.name.startswith(RATIO_SCOPE))


def test_the_probe_is_refused_when_its_cut_would_write_a_variable():
    v = tf.Variable(1.0)

    @tf.function
    def f(x):
        v.assign_add(1.0)
        return tf.identity(x * v.read_value(), name="out")

    graph = f.get_concrete_function(tf.TensorSpec([], tf.float32)).graph.as_graph_def()
    out = next(n.name for n in graph.node if n.name.startswith("out"))
    writes = Taps({0: [Tap(virtual=f"{out}:0", plain="x:0")]})
    assert build_probe(writes.with_ratio(graph)) is None
    cut = build_probe(Taps({0: [Tap(virtual="x:0", plain="x:0")]}).with_ratio(graph))
    assert {n.name for n in cut.node} == {"x"} | {
        n.name for n in cut.node if n.name.startswith(RATIO_SCOPE)}


@pytest.mark.parametrize("forms", [(), ("gram", "columns")], ids=["direct", "columns"])
def test_a_convolution_kernels_ratio_reads_its_gradient_once(forms, monkeypatch):
    """A post-scaled convolution kernel (f over its output channels): its gradient's norms
    over the other three axes, then f (not a matrix product: no Gram form)."""
    monkeypatch.setattr(svgd_rewrite.probe, "FORMS", forms)
    rng = np.random.default_rng(1)
    x, dy = rng.normal(size=(2, 5, 5, 3)), rng.normal(size=(2, 5, 5, 4))
    f = rng.uniform(0.5, 2.0, size=4)

    @tf.function
    def step(x, dy, f):
        target = tf.raw_ops.Conv2DBackpropFilter(
            input=x, filter_sizes=[3, 3, 3, 4], out_backprop=dy, strides=[1, 1, 1, 1],
            padding="SAME", name="target")
        return tf.identity(target * f, name="apply")

    specs = [tf.TensorSpec(s, tf.float32, name=n) for n, s in
             (("x", x.shape), ("dy", dy.shape), ("f", f.shape))]
    graph = step.get_concrete_function(*specs).graph.as_graph_def()
    scaled = next(n.name for n in graph.node if n.op == "Mul")
    out = Taps({0: [Tap(virtual=f"{scaled}:0", plain="target:0")]}).with_ratio(
        graph, infer_shapes(graph, {}))
    ratio = tf.function(lambda: tf.graph_util.import_graph_def(
        out, input_map={f"{n}:0": tf.constant(v, tf.float32)
                        for n, v in (("x", x), ("dy", dy), ("f", f))},
        return_elements=[RATIO], name="probe")[0])()
    target = tf.raw_ops.Conv2DBackpropFilter(
        input=tf.constant(x), filter_sizes=[3, 3, 3, 4], out_backprop=tf.constant(dy),
        strides=[1, 1, 1, 1], padding="SAME").numpy()
    assert float(ratio[0]) == pytest.approx(
        np.linalg.norm(target * f) / np.linalg.norm(target), rel=1e-5)
    read = [n.op for n in out.node if n.name.startswith(RATIO_SCOPE) and n.input
            and n.input[0] == "target:0"]
    assert read == (["EuclideanNorm"] if forms else ["L2Loss"])
