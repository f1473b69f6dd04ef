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


def _matmul_batch_axis(node: NodeDef, slot: int, rank: int) -> int:
    # MatMul's output is [rows of a, cols of b]: the batch axis comes from x, the other operand.
    return 0 if slot == 1 else 1


REGISTRY: dict[str, OpSpec] = {
    spec.op: spec
    for spec in (
        OpSpec(
            op="MatMul",
            param_slots=(0, 1),
            grad_ops=(GradOp("MatMul", ((0, 1), (1, 0))),),
            default=True,
            batch_axis=_matmul_batch_axis,
            channel_axis=lambda node, slot, rank: 1 - _matmul_batch_axis(node, slot, rank),
            x_slot=lambda slot: 1 - slot,
            description="Dense kernel (either operand, any transpose_a/transpose_b)",
        ),
        OpSpec(
            op="Conv2D",
            param_slots=(1,),
            grad_ops=(GradOp("Conv2DBackpropFilter", ((0, 2),)),),
            default=True,
            batch_axis=lambda node, slot, rank: 0,
            channel_axis=lambda node, slot, rank: _channels_last(node, rank),
            x_slot=lambda slot: 0,
            description="Conv2D filter (NHWC or NCHW, any strides, padding, dilations)",
        ),
        OpSpec(
            op="BiasAdd",
            param_slots=(1,),
            grad_ops=(GradOp("BiasAddGrad", ((None, 0),)),),
            default=False,
            batch_axis=lambda node, slot, rank: 0,
            channel_axis=lambda node, slot, rank: _channels_last(node, rank),
            x_slot=lambda slot: None,
            description="bias (opt-in)",
        ),
    )
}

DEFAULT_OPS: tuple[str, ...] = tuple(name for name, spec in REGISTRY.items() if spec.default)

# Ops that only view a variable's value on its way to a consumer (looked through).
VIEW_OPS = frozenset({"ReadVariableOp", "Identity", "Cast", "Snapshot"})

# Ops that read only a tensor's shape (not a consumer of θ's value).
SHAPE_OPS = frozenset({"Shape", "ShapeN", "Size", "Rank", "ZerosLike", "OnesLike"})

# Ops that write a variable through its handle, and the slots that hold the handle.
WRITE_OP_PREFIXES = ("Assign", "ResourceApply", "ResourceSparseApply", "ResourceScatter")


GATHER_OPS = frozenset({"ResourceGather", "GatherV2", "Gather", "GatherNd", "ResourceGatherNd"})
ELEMENTWISE_OPS = frozenset({"Mul", "AddV2", "Add", "Sub", "BiasAdd", "RealDiv", "Neg"})


def identity_reason(op: str) -> str:
    """Why a consumer of θ with no registry entry keeps the identity transform."""
    if op in GATHER_OPS:
        return f"{op} is a gather (embedding lookup): θ's rows are selected, not a linear kernel"
    if op in ELEMENTWISE_OPS:
        return f"{op} is elementwise in θ (a norm's scale/offset, a bias): not a kernel op"
    return f"{op} is not linear in θ (no registry entry)"
