"""Site records shared by the stages: a consumer of θ (a member of V_θ→σ or a gradient op),
its P once matched, and σ' as the layer outputs it; why a consumer with no registry entry
keeps the identity transform. A leaf module: analysis, loop matching, proofs and the plan
read these types without importing each other."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .ir import GraphIR, Tensor
from .registry import REGISTRY, SLICE_OPS, identity_reason


@dataclass(frozen=True)
class Match:
    """P for one site: the gradient op, the input slot carrying g, and g itself."""

    grad_op: str
    g_slot: int
    g: Tensor


@dataclass(frozen=True)
class LayerOutput:
    """σ' as the user's layer outputs it: ``node`` (F itself, or the last position op after
    it), ``g`` (the gradient of that output: Algorithm 1's g) and ``chain`` (the gradient's
    position ops from ``g`` to P's g input, in order; empty when σ' is F's output)."""

    node: str
    g: Tensor
    chain: tuple[str, ...] = ()


@dataclass
class Consumer:
    """A node that consumes a view of θ (a member of V_θ→σ or a backward/update op).

    Inside a loop, ``node`` names F in the forward body, ``at`` the loop, ``loop`` how F's
    gradient leaves the gradient loop (``loops.LoopMatch``). Once matched: ``g_dtype``,
    ``p_node`` (P's NodeDef) and ``p_shape`` (the static shape of what post-scaling would
    scale: P's output, or the gradient loop's output).
    """

    node: str
    op: str
    slot: int
    variable: str  # θ's placeholder
    match: Match | None = None
    reason: str | None = None  # why no match was possible, when known
    at: str = ""  # the flat graph's node holding the consumer (itself, or its loop)
    loop: Any = None
    g_dtype: Any = None
    p_node: Any = None
    p_shape: Any = None
    p_dtype: Any = None  # the dtype of what post-scaling would scale
    param_size: int = 0  # θ's number of elements
    output: LayerOutput | None = None  # σ' as the layer outputs it (``proofs.layer_output``)

    def __post_init__(self):
        self.at = self.at or self.node


def consumer_reason(ir: GraphIR, node: str) -> str:
    """Why a consumer of θ with no registry entry keeps the identity transform; a slice of θ
    is told apart by what its parts feed (linear ops: a kernel cut per gate; else a bias)."""
    op = ir.op(node)
    if op in SLICE_OPS:
        parts = [(node, port) for port in range(64)]  # Split/Unpack: one output per part
        feeds_linear = any(ir.op(n) in REGISTRY for t in parts for a in ir.aliases(t)
                           for n, _ in ir.consumers(a))
        if not feeds_linear:
            return (f"θ is cut into parts ({op}) for elementwise uses (a bias, gates): not a "
                    "kernel op")
    return identity_reason(op)
