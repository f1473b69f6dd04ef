"""The declarative op registry: everything the tool knows about forward ops linear in θ.

Per forward op type F: which inputs may hold θ (F is linear in them), which gradient op types
can be P (the op turning F's upstream gradient g into θ's gradient contribution) with the
slots of P that carry F's other operand x and g, the batch and channel axes of F's output
σ', and whether F is in the default op set. Adding an op is adding an entry here (and a test).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from tensorflow.core.framework import node_def_pb2

NodeDef = node_def_pb2.NodeDef


@dataclass(frozen=True)
class GradOp:
    """A gradient op type that can be P, with its allowed (x_slot, g_slot) pairs.

    ``x_slot`` is the input of P that reads F's other operand (``None`` when P does not read it).
    """

    op: str
    slots: tuple[tuple[int | None, int], ...]


@dataclass(frozen=True)
class OpSpec:
    """Registry entry of one forward op type."""

    op: str
    param_slots: tuple[int, ...]
    grad_ops: tuple[GradOp, ...]
    default: bool
    # (F's NodeDef, θ's slot in F, rank of σ') -> axis index
    batch_axis: Callable[[NodeDef, int, int], int]
    channel_axis: Callable[[NodeDef, int, int], int]
    # slot of F's other operand x, given θ's slot (None: P does not read x)
    x_slot: Callable[[int], int | None]
    description: str = ""


def _data_format(node: NodeDef) -> str:
    attr = node.attr.get("data_format")
    return attr.s.decode() if attr is not None and attr.s else "NHWC"


def _channels_last(node: NodeDef, rank: int) -> int:
    return 1 if _data_format(node).startswith("NC") else rank - 1


def _first(node, slot, rank) -> int:
    return 0


def _channel(node, slot, rank) -> int:
    return _channels_last(node, rank)


def _matmul_batch_axis(node: NodeDef, slot: int, rank: int) -> int:
    # The output is [..., rows of a, cols of b]: with θ as b the rows (or the leading batch
    # dimensions) come from x; with θ as a and no batch dimensions, the columns do.
    return 1 if slot == 0 and rank == 2 else 0


def _matmul_channel_axis(node: NodeDef, slot: int, rank: int) -> int:
    return rank - 1 if slot == 1 else rank - 2


def _einsum_axes(node: NodeDef, slot: int) -> tuple[str, str, str]:
    equation = node.attr["equation"].s.decode().replace(" ", "")
    inputs, _, output = equation.partition("->")
    operands = inputs.split(",")
    return operands[slot], operands[1 - slot], output


def _einsum_batch_axis(node: NodeDef, slot: int, rank: int) -> int:
    theta, _, output = _einsum_axes(node, slot)
    if "." in output:
        return 0
    return next((i for i, c in enumerate(output) if c not in theta), 0)


def _einsum_channel_axis(node: NodeDef, slot: int, rank: int) -> int:
    theta, _, output = _einsum_axes(node, slot)
    if "." in output:
        return rank - 1
    return max((i for i, c in enumerate(output) if c in theta), default=rank - 1)


_BINARY = ((0, 1), (1, 0))  # P reads x in one slot and g in the other
_FILTER_GRAD = ((0, 2),)    # Conv*BackpropFilter(x, filter_sizes, g)
_TRANSPOSED = ((2, 0),)     # Conv*BackpropFilter(g, filter_sizes, x) for a transposed conv

REGISTRY: dict[str, OpSpec] = {
    spec.op: spec
    for spec in (
        OpSpec("MatMul", (0, 1), (GradOp("MatMul", _BINARY),), True,
               _matmul_batch_axis, _matmul_channel_axis, lambda slot: 1 - slot,
               "Dense kernel (either operand, any transpose_a/transpose_b; Dense on rank ≥ 3 "
               "inputs through Tensordot)"),
        *(OpSpec(op, (0, 1), (GradOp(op, _BINARY),), True, _matmul_batch_axis,
                 _matmul_channel_axis, lambda slot: 1 - slot,
                 "kernel of EinsumDense / MultiHeadAttention / tf.matmul on rank ≥ 3 input "
                 "(adj_x/adj_y)")
          for op in ("BatchMatMulV2", "BatchMatMulV3", "BatchMatMul")),
        OpSpec("Einsum", (0, 1), (GradOp("Einsum", _BINARY),), True,
               _einsum_batch_axis, _einsum_channel_axis, lambda slot: 1 - slot,
               "kernel operand of a two-operand einsum"),
        OpSpec("Conv2D", (1,), (GradOp("Conv2DBackpropFilter", _FILTER_GRAD),), True,
               _first, _channel, lambda slot: 0,
               "Conv2D filter (NHWC/NCHW, strides, padding, dilations); Conv1D on expanded dims; "
               "the pointwise kernel of SeparableConv2D"),
        OpSpec("Conv3D", (1,), (GradOp("Conv3DBackpropFilterV2", _FILTER_GRAD),
                                GradOp("Conv3DBackpropFilter", _FILTER_GRAD)), True,
               _first, _channel, lambda slot: 0, "Conv3D filter (NDHWC/NCDHW)"),
        OpSpec("DepthwiseConv2dNative", (1,),
               (GradOp("DepthwiseConv2dNativeBackpropFilter", _FILTER_GRAD),), True,
               _first, _channel, lambda slot: 0,
               "DepthwiseConv2D kernel, the depthwise kernel of SeparableConv2D"),
        OpSpec("Conv2DBackpropInput", (1,), (GradOp("Conv2DBackpropFilter", _TRANSPOSED),), True,
               _first, _channel, lambda slot: 2,
               "Conv2DTranspose filter (the transposed convolution as a forward op)"),
        OpSpec("Conv3DBackpropInputV2", (1,), (GradOp("Conv3DBackpropFilterV2", _TRANSPOSED),),
               True, _first, _channel, lambda slot: 2, "Conv3DTranspose filter"),
        OpSpec("BiasAdd", (1,), (GradOp("BiasAddGrad", ((None, 0),)),), False,
               _first, _channel, lambda slot: None, "bias (opt-in)"),
    )
}

DEFAULT_OPS: tuple[str, ...] = tuple(name for name, spec in REGISTRY.items() if spec.default)

# Convolutions (the paper's s for them is 0.01–0.001, not the MLP's 0.1).
CONV_OPS = frozenset({"Conv2D", "Conv3D", "DepthwiseConv2dNative", "Conv2DBackpropInput",
                      "Conv3DBackpropInputV2"})

# Ops that only view (cast, reshape) a variable's value on its way to a consumer: looked
# through, since a forward op linear in the view is linear in θ.
VIEW_OPS = frozenset({"ReadVariableOp", "Identity", "Cast", "Snapshot", "ExpandDims", "Reshape",
                      "Squeeze", "Transpose"})

# Function calls that the load stage inlines.
CALL_OPS = frozenset({"PartitionedCall", "StatefulPartitionedCall"})

# Control flow: θ used inside a function body that is not inlined.
CONTROL_FLOW_OPS = frozenset({"While", "StatelessWhile", "If", "StatelessIf", "Case",
                              "StatelessCase"})

# Ops that read only a tensor's shape (not a consumer of θ's value).
SHAPE_OPS = frozenset({"Shape", "ShapeN", "Size", "Rank", "ZerosLike", "OnesLike"})

# Ops that write a variable through its handle, and the slots that hold the handle.
WRITE_OP_PREFIXES = ("Assign", "Apply", "SparseApply", "ResourceApply", "ResourceSparseApply",
                     "Scatter", "ResourceScatter")

# Fused optimizer ops: input 0 is the trained variable, other variable inputs are its state.
FUSED_APPLY_PREFIXES = ("Apply", "SparseApply", "ResourceApply", "ResourceSparseApply")

# Where a training graph's data comes from: a gradient depends on one of these.
DATA_SOURCE_OPS = frozenset({"Placeholder", "PlaceholderWithDefault", "IteratorGetNext",
                             "IteratorGetNextSync", "IteratorGetNextAsOptional"})

# v1 loops: the op whose output is a loop's back edge (left out of topological orders).
BACK_EDGE_OPS = frozenset({"NextIteration", "RefNextIteration"})

# TF1 graphs: variables as nodes of the graph (ref or resource).
VARIABLE_OPS = {"VariableV2": "ref", "Variable": "ref", "VarHandleOp": "resource"}


# v1 control flow: a tensor entering a while loop's frame.
LOOP_ENTRY_OPS = frozenset({"Enter", "RefEnter"})

GATHER_OPS = frozenset({"ResourceGather", "GatherV2", "Gather", "GatherNd", "ResourceGatherNd"})
ELEMENTWISE_OPS = frozenset({"Mul", "AddV2", "Add", "Sub", "RealDiv", "Neg"})


def identity_reason(op: str) -> str:
    """Why a consumer of θ with no registry entry keeps the identity transform."""
    if op in CONTROL_FLOW_OPS:
        return (f"θ is used inside a {op} body (control flow): sites there are not rewritten; "
                "move the layer out of the loop/branch to transform it")
    if op in LOOP_ENTRY_OPS:
        return ("θ is used inside a tf.compat.v1.while_loop (it enters the loop frame): sites "
                "inside loops are not rewritten; move the layer out of the loop to transform it")
    if op in GATHER_OPS:
        return f"{op} is a gather (embedding lookup): θ's rows are selected, not a linear kernel"
    if op in ELEMENTWISE_OPS:
        return f"{op} is elementwise in θ (a norm's scale/offset, a bias): not a kernel op"
    return f"{op} is not linear in θ (no registry entry)"
