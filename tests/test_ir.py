"""Fast tests of the IR, the matcher, the registry's geometry, the inliner and the surgery on
small hand-built GraphDefs (``fixtures/graphs/*.pbtxt``, written by
``fixtures/graphs/generate.py``)."""
from pathlib import Path

import pytest
import tensorflow as tf
from google.protobuf import text_format

from svgd_rewrite.analyze import MATCH_FILTERS, analyze
from svgd_rewrite.graphdef import load_graph_def, rewrite_graph_def
from svgd_rewrite.inline import inline_calls
from svgd_rewrite.ir import GraphIR, Tensor
from svgd_rewrite.registry import CALL_OPS, REGISTRY

GRAPHS = Path(__file__).resolve().parents[1] / "fixtures" / "graphs"


def read(name: str) -> tf.compat.v1.GraphDef:
    gd = tf.compat.v1.GraphDef()
    text_format.Parse((GRAPHS / f"{name}.pbtxt").read_text(), gd)
    return gd


def test_tensor_refs_print_and_parse():
    t = Tensor("layer/MatMul", 1)
    assert str(t) == "layer/MatMul:1" and Tensor.parse("layer/MatMul:1") == t
    assert Tensor.parse("x") == Tensor("x", 0) == ("x", 0)
    with pytest.raises(ValueError):
        Tensor.parse("^x")


def test_identity_n_is_port_aware():
    ir = GraphIR(read("identity_n"))
    assert ir.canonical(Tensor("idn", 1)) == ("b", 0)
    assert ir.canonical(Tensor("b_again", 0)) == ("b", 0)
    assert Tensor("b_again", 0) in ir.aliases(Tensor("b", 0))
    assert Tensor("neg_a", 0) not in ir.aliases(Tensor("b", 0))
    bits = ir.reach_bits({"a": 0, "b": 1})
    assert ir.bits_of(bits, Tensor("neg_a", 0)) == 0b01  # port 0 carries a only
    assert ir.bits_of(bits, Tensor("b_again", 0)) == 0b10
    assert ir.ancestors([Tensor("neg_a", 0)]) == {"neg_a", "idn", "a"}


def test_v1_loop_back_edge_is_left_out_of_the_order():
    ir = GraphIR(read("while_v1"))
    order = ir.topological_order()
    assert sorted(order) == sorted(n.name for n in ir.nodes())
    position = {n: i for i, n in enumerate(order)}
    back = [n.name for n in ir.nodes() if n.op == "NextIteration"]
    assert back
    for u, v, data in ir.g.edges(data=True):
        if u not in back:
            assert position[u] < position[v], (u, v)


def test_each_matcher_skip_reason():
    step = load_graph_def(read("dense_variants"))
    by_node = {c.node: c for c in analyze(step.loaded).forward}
    assert by_node["y"].match.grad_op == "p" and by_node["y"].match.g == ("g", 0)
    assert by_node["abs_w"].reason == "Abs is not linear in θ (no registry entry)"
    assert by_node["w_as_value"].reason == ("θ enters BiasAdd as input 0, in which it is not a "
                                           "linear parameter")
    no_p = "no gradient op P found that turns its output gradient into θ's update"
    assert by_node["y2"].reason == no_p  # its candidate feeds no update
    assert by_node["y3"].reason == no_p + " (no candidate's g depends on F's output)"
    assert by_node["y4a"].reason == by_node["y4b"].reason == (
        "ambiguous gradient op: p4a, p4b all qualify as P")


def test_match_filters_are_named_with_reasons():
    names = [f.name for f in MATCH_FILTERS]
    assert len(set(names)) == len(names)
    assert all(f.reason.startswith("no gradient op P found") for f in MATCH_FILTERS)


# (op, attrs, θ's slot, rank of σ') -> (batch axis, channel axis) of the registry's entries
# (a new op's axes are checked end to end by its fixture in test_equivalence).
GEOMETRY = [
    ("MatMul", {}, 1, 2, (0, 1)),
    ("MatMul", {}, 0, 2, (1, 0)),
    ("BatchMatMulV2", {}, 1, 3, (0, 2)),
    ("BatchMatMulV3", {}, 1, 3, (0, 2)),
    ("BatchMatMul", {}, 1, 3, (0, 2)),
    ("Einsum", {"equation": b"btd,dh->bth"}, 1, 3, (0, 2)),
    ("Conv2D", {}, 1, 4, (0, 3)),
    ("Conv2D", {"data_format": b"NCHW"}, 1, 4, (0, 1)),
    ("Conv3D", {}, 1, 5, (0, 4)),
    ("DepthwiseConv2dNative", {}, 1, 4, (0, 3)),
    ("Conv2DBackpropInput", {}, 1, 4, (0, 3)),
    ("Conv3DBackpropInputV2", {}, 1, 5, (0, 4)),
    ("BiasAdd", {}, 1, 2, (0, 1)),
]


@pytest.mark.parametrize("op,attrs,slot,rank,axes", GEOMETRY)
def test_geometry_of_each_registry_op(op, attrs, slot, rank, axes):
    node = tf.compat.v1.NodeDef(name="f", op=op)
    for key, value in attrs.items():
        node.attr[key].s = value
    spec = REGISTRY[op]
    assert (spec.batch_axis(node, slot, rank), spec.channel_axis(node, slot, rank)) == axes


def test_inliner_flattens_a_call():
    flat = inline_calls(read("call"))
    ops = {n.op for n in flat.node}
    assert not ops & CALL_OPS and "MatMul" in ops
    ir = GraphIR(flat)
    matmul = next(n.name for n in flat.node if n.op == "MatMul")
    assert {ir.canonical(t)[0] for t in ir.data_inputs(matmul)} == {"x", "w"}
    assert ir.canonical(Tensor("out", 0)) == (matmul, 0)


@pytest.mark.parametrize("golden,options", [
    ("dense_step_svgd", {}),  # default: P's output post-scaled, one-pass reduction
    ("dense_step_svgd_prescaled", {"post_scale": False, "portable": True}),  # Figure 6 as drawn
])
def test_golden_surgery(golden, options):
    result = rewrite_graph_def(read("dense_step"), **options)
    got = [" ".join([n.name, n.op, *n.input]) for n in result.graph_def.node
           if (n.name.startswith("svgd_rewrite/") and n.name != "svgd_rewrite/marker")
           or n.name in ("p", "step", "assign_w")]
    want = [line for line in (GRAPHS / f"{golden}.golden").read_text().splitlines()
            if line and not line.startswith("#")]
    assert sorted(got) == sorted(want)
