"""SVGD facts: the forward ops linear in θ that the rewrite transforms.

Per forward op type F: which inputs may hold θ (F is linear in them), which gradient op types
can be P (the op turning F's upstream gradient g into θ's gradient contribution) with the
slots of P that carry F's other operand x and g, the batch and channel axes of F's output
σ', and whether F is in the default op set. Adding an op is adding an entry here (and a
fixture and a test: docs/architecture.md).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from .tensorflow_ops import (CONTROL_FLOW_OPS, ELEMENTWISE_OPS, FUSED_RNN_OPS, GATHER_OPS,
                             LOOP_ENTRY_OPS, SLICE_OPS)

if TYPE_CHECKING:
    from tensorflow.core.framework.node_def_pb2 import NodeDef


# (P's NodeDef, P's g slot, rank of g, g's channel axis) -> the axes of P's output that hold
# g's channel axis (row-major: depthwise filters split C_in·multiplier over two axes), or None
# when P contracts it. Where P keeps the channel, P(x, g·f) = P(x, g)·f for f constant over
# every other axis: SVGD then scales P's parameter-sized output instead of g ("post-scaling").
ChannelOut = Callable[["NodeDef", int, int, int], "tuple[int, ...] | None"]


def _never(node, g_slot, rank, channel) -> None:
    return None


@dataclass(frozen=True, kw_only=True)
class GradOp:
    """A gradient op type that can be P, with its allowed (x_slot, g_slot) pairs.

    ``x_slot`` is the input of P that reads F's other operand (``None`` when P does not read it).
    ``channel_out`` says where g's channel axis lands in P's output (``ChannelOut``).
    """

    op: str
    slots: tuple[tuple[int | None, int], ...]
    channel_out: ChannelOut = _never


@dataclass(frozen=True, kw_only=True)
class OpSpec:
    """Registry entry of one forward op type (built with keywords)."""

    op: str
    param_slots: tuple[int, ...]  # the inputs of F that may hold θ
    grad_ops: tuple[GradOp, ...]  # the op types that can be P
    # (F's NodeDef, θ's slot in F, rank of σ') -> axis index
    batch_axis: Callable[[NodeDef, int, int], int]
    channel_axis: Callable[[NodeDef, int, int], int]
    # slot of F's other operand x, given θ's slot (None: P does not read x)
    x_slot: Callable[[int], int | None]
    default: bool = True  # in the default op set (else opt-in)
    convolution: bool = False  # a sliding kernel (the scale warning, granularity="auto")


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


def _attr_flag(node: NodeDef, *names: str) -> bool:
    return any(node.attr[n].b for n in names if n in node.attr)


def _matmul_channel_out(node: NodeDef, g_slot: int, rank: int, channel: int):
    """MatMul / BatchMatMul P: output [..., rows of a', cols of b']; g's channel survives when
    it is a row of a' (g as a) or a column of b' (g as b); batch dimensions are not kept
    (a Sum over them follows P)."""
    if rank < 2 or channel < rank - 2:
        return None
    last = channel == rank - 1
    if g_slot == 0:
        transposed = _attr_flag(node, "transpose_a", "adj_x")
        return (-2,) if last == transposed else None
    transposed = _attr_flag(node, "transpose_b", "adj_y")
    return (-1,) if last != transposed else None


def _einsum_channel_out(node: NodeDef, g_slot: int, rank: int, channel: int):
    equation = node.attr["equation"].s.decode().replace(" ", "")
    inputs, _, output = equation.partition("->")
    operands = inputs.split(",")
    if "." in equation or len(operands) != 2 or len(operands[g_slot]) != rank:
        return None
    letter = operands[g_slot][channel]
    if letter not in output or output.count(letter) != 1:
        return None
    return (output.index(letter) - len(output),)


def _filter_last(node, g_slot, rank, channel):
    return (-1,)  # Conv*BackpropFilter(x, sizes, g): filter [..., in, out]


def _filter_in(node, g_slot, rank, channel):
    return (-2,)  # transposed convolution: Conv*BackpropFilter(g, sizes, x): [..., out, in]


def _depthwise_out(node, g_slot, rank, channel):
    return (-2, -1)  # filter [h, w, in, multiplier]; σ' channel = in·multiplier


def _bias_out(node, g_slot, rank, channel):
    return (-1,)  # BiasAddGrad(g): [channels]


_BINARY = ((0, 1), (1, 0))  # P reads x in one slot and g in the other
_FILTER_GRAD = ((0, 2),)    # Conv*BackpropFilter(x, filter_sizes, g)
_TRANSPOSED = ((2, 0),)     # Conv*BackpropFilter(g, filter_sizes, x) for a transposed conv

def _other(slot: int) -> int:
    return 1 - slot


def _filter_op(op: str, grad_ops: tuple[str, ...], slots, x_input: int,
               channel_out: ChannelOut) -> OpSpec:
    """A convolution-like F: θ is its filter (input 1), x is its input ``x_input``, σ' is
    batch-first with the channel set by ``data_format``, and P is one of ``grad_ops`` (filter
    gradients) reading x and g at ``slots``."""
    return OpSpec(op=op, param_slots=(1,),
                  grad_ops=tuple(GradOp(op=g, slots=slots, channel_out=channel_out)
                                 for g in grad_ops),
                  batch_axis=_first, channel_axis=_channel, x_slot=lambda slot: x_input,
                  convolution=True)


REGISTRY: dict[str, OpSpec] = {
    spec.op: spec
    for spec in (
        OpSpec(op="MatMul", param_slots=(0, 1),
               grad_ops=(GradOp(op="MatMul", slots=_BINARY, channel_out=_matmul_channel_out),),
               batch_axis=_matmul_batch_axis, channel_axis=_matmul_channel_axis, x_slot=_other),
        *(OpSpec(op=op, param_slots=(0, 1), grad_ops=(GradOp(op=op, slots=_BINARY,
                                           channel_out=_matmul_channel_out),),
                 batch_axis=_matmul_batch_axis, channel_axis=_matmul_channel_axis,
                 x_slot=_other)
          for op in ("BatchMatMulV2", "BatchMatMulV3", "BatchMatMul")),
        OpSpec(op="Einsum", param_slots=(0, 1), grad_ops=(GradOp(op="Einsum", slots=_BINARY,
                                 channel_out=_einsum_channel_out),),
               batch_axis=_einsum_batch_axis, channel_axis=_einsum_channel_axis, x_slot=_other),
        _filter_op("Conv2D", ("Conv2DBackpropFilter",), _FILTER_GRAD, 0, _filter_last),
        _filter_op("Conv3D", ("Conv3DBackpropFilterV2", "Conv3DBackpropFilter"), _FILTER_GRAD,
                   0, _filter_last),
        _filter_op("DepthwiseConv2dNative", ("DepthwiseConv2dNativeBackpropFilter",),
                   _FILTER_GRAD, 0, _depthwise_out),
        _filter_op("Conv2DBackpropInput", ("Conv2DBackpropFilter",), _TRANSPOSED, 2, _filter_in),
        _filter_op("Conv3DBackpropInputV2", ("Conv3DBackpropFilterV2",), _TRANSPOSED, 2,
                   _filter_in),
        OpSpec(op="BiasAdd", param_slots=(1,),
               grad_ops=(GradOp(op="BiasAddGrad", slots=((None, 0),), channel_out=_bias_out),),
               batch_axis=_first, channel_axis=_channel, x_slot=lambda slot: None, default=False),
    )
}

DEFAULT_OPS: tuple[str, ...] = tuple(name for name, spec in REGISTRY.items() if spec.default)
OPT_IN_OPS: tuple[str, ...] = tuple(name for name, spec in REGISTRY.items() if not spec.default)

# Convolutions (the paper's s for them is 0.01–0.001, not the MLP's 0.1): the entries built by
# ``_filter_op``.
CONV_OPS = frozenset(name for name, spec in REGISTRY.items() if spec.convolution)

def identity_reason(op: str) -> str:
    """Why a consumer of θ with no registry entry keeps the identity transform."""
    if op in CONTROL_FLOW_OPS:
        return (f"θ is used inside a {op} body (control flow): sites there are not rewritten; "
                "move the layer out of the loop/branch to transform it")
    if op in LOOP_ENTRY_OPS:
        return ("θ is used inside a tf.compat.v1.while_loop (it enters the loop frame): sites "
                "inside loops are not rewritten; move the layer out of the loop to transform it")
    if op in FUSED_RNN_OPS:
        return (f"{op} is a fused cuDNN recurrent layer the tool cannot enter: use the "
                "non-fused implementation (Keras: use_cudnn=False) to give its kernels virtual "
                "gradients")
    if op in SLICE_OPS:
        return (f"θ is cut into parts ({op}) before the linear ops: a site reads θ whole, so "
                "its parts keep their plain gradients")
    if op in GATHER_OPS:
        return f"{op} is a gather (embedding lookup): θ's rows are selected, not a linear kernel"
    if op in ELEMENTWISE_OPS:
        return f"{op} is elementwise in θ (a norm's scale/offset, a bias): not a kernel op"
    return f"{op} is not linear in θ (no registry entry)"
