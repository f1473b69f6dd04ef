"""Site proofs: what the analysis establishes from the graph before a site is transformed.

A candidate site (F linear in θ, with its P) is transformed only when the graph shows that

(a) σ''s batch axis is a data batch: F's other operand x depends on the step's data, not on
    variables alone (LoRA's A·B, a product of two weights, has no data batch);
(b) σ' is the layer output the user sees: ops that only move, pad or crop positions between F
    and that output (``BatchToSpaceND`` of a dilated convolution, the ``Squeeze`` of Conv1D)
    belong to the site, and P's g is traced back through their gradients to the layer
    output's gradient (``layer_output``);
(c) the loss scale that multiplies every g is known, whatever its dtype (``find_loss_scale``):
    a factor c that multiplies the gradient seed and divides θ's gradient on its way to the
    update; r then accumulates (g / c)².

It also proves which optimizer slots hold state (``carries_state``): a slot the step
overwrites before any update reads it (tf_keras's SGD keeps ``m`` at momentum 0, where
``m = -lr·g + 0·m``) makes the update plain SGD on the virtual gradients.

Each function answers with a fact or with the reason the candidate keeps the identity.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import tensorflow as tf

from .ir import GraphIR, Tensor
from .sites import LayerOutput
from .variables import variable_reads
from .registry import (BACKWARD_POSITION_OPS, CROP_OPS, FORWARD_POSITION_OPS, PAD_OPS,
                       PASS_THROUGH_OPS, SHAPE_OPS, VARIABLE_READ_OPS, VIEW_OPS)

MAX_CHAIN = 4  # position ops between F and the layer output


# --- (a) the batch axis is a data batch ---------------------------------------------------

class DataOrigin:
    """For every node, whether its value depends on the step's data (anything that is not a
    variable or a constant: inputs, iterators, random ops), on variables only, or on constants
    only. One pass in topological order; answers ``variables_only(tensor)``."""

    _CONST, _VAR, _DATA = 0, 1, 2

    def __init__(self, ir: GraphIR, variable_nodes: set[str]):
        self.ir = ir
        self.kind: dict[str, int] = {}
        for name in ir.topological_order():
            op = ir.op(name)
            inputs = ir.data_inputs(name)
            if name in variable_nodes:
                k = self._VAR
            elif op == "Const":
                k = self._CONST
            elif "Random" in op or not inputs:
                k = self._DATA
            else:
                k = max((self.kind.get(t[0], self._DATA) for t in inputs), default=self._DATA)
            self.kind[name] = k

    def variables_only(self, t: Tensor) -> bool:
        """True when ``t`` is computed from variables (and constants) alone."""
        return self.kind.get(t[0], self._DATA) == self._VAR


NO_DATA_BATCH = ("σ''s first axis is not a data batch: F's other operand is computed from "
                 "variables alone (a product of weights, e.g. LoRA's A·B); θ keeps its plain "
                 "gradient")


# --- (b) σ' is the layer output ----------------------------------------------------------

def _value_consumers(ir: GraphIR, t: Tensor) -> list[tuple[str, int]]:
    return [(n, s) for a in ir.aliases(t) for n, s in ir.consumers(a)
            if ir.op(n) not in SHAPE_OPS and ir.op(n) not in PASS_THROUGH_OPS]


def _static(shape) -> list | None:
    return None if shape is None or shape.rank is None else shape.as_list()


def _same_shape(a: list | None, b: list | None) -> bool:
    if a is None or b is None or len(a) != len(b):
        return False
    return all(x is None or y is None or x == y for x, y in zip(a[1:], b[1:]))


def layer_output(ir: GraphIR, shape_of: Callable[[Tensor], object], f_node: str, x: Tensor | None,
                 g: Tensor, depends_on_f: Callable[[Tensor], bool]) -> LayerOutput | str:
    """σ' for the candidate F (its output, or the end of the position ops after it), or the
    reason the layer output could not be proven (a dilated convolution whose gradient does
    not pass back through the same positions)."""
    forward: list[str] = []
    t: Tensor = (f_node, 0)
    while len(forward) < MAX_CHAIN:
        readers = _value_consumers(ir, t)
        if len(readers) != 1 or readers[0][1] != 0 or ir.op(readers[0][0]) not in FORWARD_POSITION_OPS:
            break
        forward.append(readers[0][0])
        t = (readers[0][0], 0)
    crops = any(ir.op(n) in CROP_OPS for n in forward)
    padded = _padded_input(ir, x)
    if padded and not crops:
        return (f"F reads a {padded} of its input with no matching "
                f"{'/'.join(sorted(CROP_OPS))} after it: σ' is not the layer output")
    if not forward:
        return LayerOutput(node=f_node, g=g)
    back: list[str] = []
    cur = ir.canonical(g)
    for _ in forward:
        if ir.op(cur[0]) not in BACKWARD_POSITION_OPS or cur[1] != 0:
            break
        back.insert(0, cur[0])
        cur = ir.canonical(ir.data_input(cur[0], 0))
    proven = (len(back) == len(forward)
              and _same_shape(_static(shape_of(cur)), _static(shape_of(t)))
              and depends_on_f(cur))
    if proven:
        return LayerOutput(node=t[0], g=cur, chain=tuple(back))
    if crops:
        return ("F is the inner op of a dilated convolution (SpaceToBatchND → F → "
                "BatchToSpaceND) and its gradient does not pass back through the same "
                "positions: σ' could not be proven to be the layer output")
    return LayerOutput(node=f_node, g=g)  # only Squeeze/ExpandDims: F's output is as good


def _padded_input(ir: GraphIR, x: Tensor | None) -> str | None:
    """The op type when F's input x is a position-padded copy of the data (SpaceToBatchND),
    looking through views (the ExpandDims of Conv1D)."""
    seen = 0
    while x is not None and seen < MAX_CHAIN:
        op = ir.op(x[0])
        if op in PAD_OPS:
            return op
        if op not in VIEW_OPS:
            return None
        x = ir.data_input(x[0], 0)
        seen += 1
    return None


# --- (c) the loss scale ------------------------------------------------------------------

@dataclass(frozen=True)
class LossScale:
    """The loss scale c that multiplies every g: the float32 tensor to divide g by, and how
    the report names it (a variable's name, or the constant's value)."""

    tensor: Tensor
    label: str


def _const_array(ir: GraphIR, t: Tensor) -> np.ndarray | None:
    """The value of a ``Const`` tensor, or None."""
    node = ir.node(t[0])
    if node.op != "Const":
        return None
    try:
        return tf.make_ndarray(node.attr["value"].tensor)
    except (TypeError, ValueError):
        return None


def _is_ones(ir: GraphIR, t: Tensor) -> bool:
    op = ir.op(t[0])
    if op == "OnesLike":
        return True
    if op == "Fill":
        return _is_ones(ir, ir.data_input(t[0], 1))
    value = _const_array(ir, t)
    return value is not None and value.size > 0 and bool(np.all(value == 1))


def _const_value(ir: GraphIR, t: Tensor) -> float | None:
    """A scalar floating ``Const``'s value, or None."""
    value = _const_array(ir, t)
    if value is None or value.shape != () or not np.issubdtype(value.dtype, np.floating):
        return None
    return float(value)


def _through_views(ir: GraphIR, t: Tensor) -> Tensor:
    while ir.op(t[0]) in ("Cast", "Identity", "Snapshot"):
        t = ir.data_input(t[0], 0)
    return t


def find_loss_scale(ir: GraphIR, shape_of, dtype_of, gs: list[Tensor], variables: dict,
                    on_update_path: Callable[[str], bool]) -> LossScale | None:
    """The loss scale c of the step, proven from the graph: a ``Mul`` of the gradient seed (a
    tensor of ones) by a scalar c, an ancestor of every g in ``gs``, where c is also on the
    way from the gradients to the update — a non-trainable scalar variable whose handle or
    read feeds θ's update (a loss-scale optimizer unscales with it), or a constant that
    divides a gradient on its way to the update (``loss_scale_factor``). A factor that only
    weights the loss is not a loss scale."""
    if not gs:
        return None
    seeds: dict[str, Tensor] = {}
    for name in ir.nodes_of_op("Mul"):
        inputs = ir.data_inputs(name)
        if len(inputs) != 2:
            continue
        for k in (0, 1):
            c = inputs[1 - k]
            shape = _static(shape_of(c))
            if _is_ones(ir, ir.canonical(inputs[k])) and shape == []:
                seeds[name] = c
    if not seeds:
        return None
    bit = {n: i for i, n in enumerate(seeds)}
    reach = ir.reach_bits(bit)
    for name, c in seeds.items():
        if not all(ir.bits_of(reach, g) >> bit[name] & 1 for g in gs):
            continue
        found = _scale_source(ir, _through_views(ir, c), dtype_of, variables, on_update_path)
        if found is not None:
            return found
    return None


def _scale_source(ir: GraphIR, c: Tensor, dtype_of, variables: dict,
                  on_update_path) -> LossScale | None:
    op = ir.op(c[0])
    if op in VARIABLE_READ_OPS:
        handle = ir.canonical(ir.data_input(c[0], 0))
        info = variables.get(handle[0])
        if info is None or info.trainable or tuple(info.shape) != ():
            return None
        if dtype_of(c) != tf.float32:
            return None
        # the seed's own read feeds every gradient: another use must reach the update
        uses = [n for a in ir.aliases(handle) for n, _ in ir.consumers(a)]
        if any(on_update_path(n) for n in uses if n != c[0]):
            return LossScale(c, info.name)
        return None
    value = _const_value(ir, c)
    if value is None or value == 0 or dtype_of(c) != tf.float32:
        return None
    for name in ir.nodes_of_op("RealDiv") + ir.nodes_of_op("Mul"):
        if not on_update_path(name):
            continue
        other = _const_value(ir, ir.canonical(ir.data_input(name, 1)))
        if other is None:
            continue
        unscales = (np.isclose(other, value, rtol=1e-6) if ir.op(name) == "RealDiv"
                    else np.isclose(other * value, 1.0, rtol=1e-6))
        if unscales:
            return LossScale(c, f"loss_scale_factor {value:g}")
    return None


# --- optimizer slots that hold state ------------------------------------------------------

def carries_state(ir: GraphIR, slots: dict[str, list[str]], updates: set[str]) -> set[str]:
    """The slots (placeholder -> its write nodes) whose value from the previous step reaches
    an update (a node of ``updates``: any variable's write, the slot's own included). A write
    other than a plain ``AssignVariableOp`` (``AssignAdd``, a fused apply op) keeps the old
    value in the new one. A read ordered after one of the slot's own writes (by data or
    control edges) reads this step's value; a path through a product with a constant zero
    carries nothing."""
    if not slots:  # plain SGD: no graph pass
        return set()
    bit = {p: k for k, p in enumerate(slots)}
    after = ir.reach_bits({w: bit[p] for p, ws in slots.items() for w in ws}, control=True)
    out = set()
    for p, k in bit.items():
        if any(ir.op(w) != "AssignVariableOp" for w in slots[p]):
            out.add(p)
            continue
        old = [r for r in variable_reads(ir, p) if not (after.get(r, 0) >> k) & 1]
        if _reaches(ir, old, updates):
            out.add(p)
    return out


def _reaches(ir: GraphIR, starts: list[str], targets: set[str]) -> bool:
    seen, stack = set(), list(starts)
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        if name in targets:
            return True
        stack.extend(dst for dst, _ in ir.readers(name) if not _times_zero(ir, dst))
    return False


def _times_zero(ir: GraphIR, name: str) -> bool:
    """A ``Mul`` one of whose operands is a constant zero (through ``Cast``/``Identity``)."""
    if ir.op(name) != "Mul":
        return False
    for t in ir.data_inputs(name):
        while ir.op(t[0]) in ("Cast", "Identity"):
            t = ir.data_input(t[0], 0)
        value = _const_array(ir, t)
        if value is not None and value.size > 0 and not np.any(value):
            return True
    return False
