"""Sites inside functional ``While`` loops (recurrent layers, ``tf.while_loop``).

TensorFlow builds the gradient of a ``While`` as a second ``While`` that runs the body's
gradient backwards in time. A forward op F(x_t, θ) in the forward body has its P in the
gradient loop's body; the gradient loop adds P(x_t, g_t) into a loop variable that leaves the
loop as θ's gradient. Found structurally:

- F reads θ's handle argument of the forward body (through ``ReadVariableOp`` and views);
- x_t reaches the gradient body either through the tensor list the forward loop pushes it on
  (``TensorListPushBack`` there, ``TensorListPopBack`` here) or, when it is loop-invariant,
  as the same outer tensor passed to both loops;
- P is a registry gradient op reading that x_t in its x slot, whose output is added
  (``AddN``/``AddV2``) to a body argument i that the body returns as output i; output i of the
  gradient loop reaches θ's update.

The rewrite (``loop_statistics.add_statistics``) gives the gradient loop two new loop variables per such P —
Σ_t Σ_rows g_t² over the axes r reduces, and the count of rows — so that r is updated once
after the loop from every timestep's g, and the accumulated gradient is scaled there by
f = s·rsqrt(r+ε): Σ_t P(x_t, g_t)·f = Σ_t P(x_t, g_t·f) when f is constant over what P sums.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import tensorflow as tf
from tensorflow.core.framework import function_pb2, node_def_pb2

from .ir import GraphIR, Tensor
from .load import VariableInfo
from .sites import Consumer, Match, consumer_reason
from .variables import variable_uses
from .registry import LOOP_OPS, REGISTRY
from .shapes import infer_shapes
from .tf_compat import function_def_to_graph_def

_PUSH, _POP = "TensorListPushBack", "TensorListPopBack"
_ADD_OPS = frozenset({"AddN", "AddV2", "Add"})
_CASTS = frozenset({"Cast", "Identity"})


@dataclass(frozen=True)
class LoopMatch:
    """A site inside a loop: where F and P live and what leaves the gradient loop."""

    forward_loop: str
    forward_node: node_def_pb2.NodeDef
    dims: list[int | None] | None
    dtype: tf.DType
    backward_loop: str
    backward_body: str
    grad_output: int
    g_in_body: str  # P's g input, FunctionDef syntax
    grad_shape: tf.TensorShape


class _Body:
    """A loop body as a GraphDef view: its arguments, the tensor each output returns."""

    def __init__(self, fdef: function_pb2.FunctionDef, library):
        self.fdef = fdef
        gd, nested_to_flat = function_def_to_graph_def(fdef)
        gd.library.CopyFrom(library)
        self.graph_def = gd
        self.ir = GraphIR(gd)
        self.args = [a.name for a in fdef.signature.input_arg]
        self.rets = [Tensor.parse(nested_to_flat.get(fdef.ret[a.name], fdef.ret[a.name]))
                     for a in fdef.signature.output_arg]
        self.fdef_nodes = {n.name: n for n in fdef.node_def}

    def output_of(self, t: Tensor) -> int | None:
        """The output index that returns tensor ``t`` (looking through Identity)."""
        canon = self.ir.canonical(t)
        for i, r in enumerate(self.rets):
            if self.ir.canonical(r) == canon:
                return i
        return None

    def arg_index(self, t: Tensor) -> int | None:
        canon = self.ir.canonical(t)
        return self.args.index(canon[0]) if canon[1] == 0 and canon[0] in self.args else None


class LoopAnalysis:
    """Matches θ's uses inside the loops of one flat graph (bodies parsed once)."""

    def __init__(self, ir: GraphIR, variables: dict[str, VariableInfo],
                 feeds_update: Callable[[str, Tensor], bool]):
        self.ir, self.variables, self.feeds_update = ir, variables, feeds_update
        self._bodies: dict[str, _Body] = {}

    def body(self, name: str) -> _Body:
        if name not in self._bodies:
            self._bodies[name] = _Body(self.ir.functions[name], self.ir.graph_def.library)
        return self._bodies[name]

    def consumers(self, loop: str, slot: int, placeholder: str) -> list:
        """The consumers of θ (entering ``loop`` at input ``slot``) inside its body, each
        matched to its P in a gradient loop or given a reason."""
        node = self.ir.node(loop)
        fwd = self.body(node.attr["body"].func.name)
        info = self.variables[placeholder]
        arg = fwd.args[slot] if slot < len(fwd.args) else None
        if arg is None:
            return []
        writes, uses = variable_uses(fwd.ir, arg)
        if writes:
            return []  # the loop updates θ (an optimizer loop), it does not read it for σ
        shapes = _body_shapes(fwd, {arg: info})
        out = []
        for f, f_slot in uses:
            op = fwd.ir.op(f)
            if op == _PUSH:
                continue  # θ's value kept for the gradient loop, not a use of θ in σ
            c = Consumer(node=f, op=op, slot=f_slot, variable=placeholder, at=loop)
            out.append(c)
            spec = REGISTRY.get(op)
            if spec is None:
                c.reason = consumer_reason(fwd.ir, f) + " (inside a loop)"
                continue
            if f_slot not in spec.param_slots:
                c.reason = f"θ enters {op} as input {f_slot}, in which it is not a linear parameter"
                continue
            x_slot = spec.x_slot(f_slot)
            if x_slot is None:
                c.reason = (f"{op} inside a loop: its P does not read F's other operand, so it "
                            "cannot be told apart from the other gradients of the loop")
                continue
            dtype, shape = shapes.get(Tensor(f, 0), (tf.float32, tf.TensorShape(None)))
            found = self._match(loop, fwd, f, spec, x_slot, placeholder)
            if isinstance(found, str):
                c.reason = found
                continue
            back, body, p, g_slot, grad_output = found
            p_node = body.ir.node(p)
            c.match = Match(grad_op=p, g_slot=g_slot, g=Tensor(*body.ir.data_input(p, g_slot)))
            shapes_attr = self.ir.node(back).attr["output_shapes"].list.shape
            grad_shape = (tf.TensorShape(shapes_attr[grad_output])
                          if grad_output < len(shapes_attr) else tf.TensorShape(None))
            c.loop = LoopMatch(
                forward_loop=loop, forward_node=fwd.ir.node(f),
                dims=None if shape.rank is None else shape.as_list(), dtype=dtype,
                backward_loop=back, backward_body=self.ir.node(back).attr["body"].func.name,
                grad_output=grad_output, g_in_body=body.fdef_nodes[p].input[g_slot],
                grad_shape=grad_shape)
            types = self.ir.node(back).attr["T"].list.type
            c.g_dtype, c.p_node, c.p_shape = dtype, p_node, grad_shape
            c.p_dtype = tf.as_dtype(types[grad_output]) if grad_output < len(types) else dtype
        self._check_accumulation(out)
        return out

    def _match(self, loop: str, fwd: _Body, f: str, spec, x_slot: int, placeholder: str):
        """(gradient loop, its body, P, P's g slot, the loop output of θ's gradient), or the
        reason none was found."""
        x = fwd.ir.canonical(fwd.ir.data_input(f, x_slot))
        outer: list[Tensor] = []  # outer tensors that carry x_t into a gradient loop
        for a in fwd.ir.aliases(x):
            for n, s in fwd.ir.consumers(a):
                if fwd.ir.op(n) == _PUSH and s == 1:
                    m = fwd.output_of(Tensor(n, 0))
                    if m is not None:
                        outer.append(("pushed", Tensor(loop, m)))
        q = fwd.arg_index(x)
        if q is not None and fwd.output_of(x) == q:  # a loop-invariant x
            outer.append(("invariant", self.ir.canonical(self.ir.data_input(loop, q))))
        found = []
        for kind, t in outer:
            for a in self.ir.aliases(t):
                for back, j in self.ir.consumers(a):
                    if back == loop or self.ir.op(back) not in LOOP_OPS:
                        continue
                    body = self.body(self.ir.node(back).attr["body"].func.name)
                    if j >= len(body.args):
                        continue
                    popped = _popped(body, j) if kind == "pushed" else Tensor(body.args[j], 0)
                    if popped is None:
                        continue
                    for p, g_slot in _p_candidates(body, spec, popped):
                        i = _accumulated_output(body, p)
                        if i is None:
                            continue
                        if self.feeds_update(placeholder, Tensor(back, i)):
                            found.append((back, body, p, g_slot, i))
        unique = {(b, p) for b, _, p, _, _ in found}
        if not found:
            return ("inside a loop: no gradient loop adds a P of this op into θ's gradient "
                    "(F's input does not reach a gradient loop, or the gradient is not "
                    "accumulated as a loop variable)")
        if len(unique) > 1:
            return ("inside a loop: ambiguous gradient op: "
                    + ", ".join(sorted(p for _, p in unique)) + " all qualify as P")
        return found[0]

    def _check_accumulation(self, consumers: list) -> None:
        """A gradient loop output is post-scaled as a whole: every term added into it must be
        a matched P of this θ; otherwise its applications keep the identity transform."""
        by_output: dict[tuple[str, int], list] = {}
        for c in consumers:
            if c.loop is not None:
                by_output.setdefault((c.loop.backward_loop, c.loop.grad_output), []).append(c)
        for (back, i), members in by_output.items():
            body = self.body(self.ir.node(back).attr["body"].func.name)
            ps = {c.match.grad_op for c in members}
            terms = _terms(body, i)
            if terms is None or any(_source(body, t)[0] not in ps for t in terms):
                for c in members:
                    c.loop, c.match = None, None
                    c.reason = ("inside a loop: θ's gradient loop variable also sums terms "
                                "that are not a P of this θ")


def _popped(body: _Body, j: int) -> Tensor | None:
    """The tensor popped from the list entering the gradient body as argument j."""
    arg = Tensor(body.args[j], 0)
    for a in body.ir.aliases(arg):
        for n, s in body.ir.consumers(a):
            if body.ir.op(n) == _POP and s == 0:
                return Tensor(n, 1)
    return None


def _p_candidates(body: _Body, spec, popped: Tensor) -> list[tuple[str, int]]:
    out = []
    for grad in spec.grad_ops:
        for node in body.ir.nodes_of_op(grad.op):
            for xs, gs in grad.slots:
                if xs is None or xs >= len(body.ir.data_inputs(node)):
                    continue
                if body.ir.canonical(body.ir.data_input(node, xs)) == popped:
                    out.append((node, gs))
    return out


def _adder(body: _Body, p: str) -> str | None:
    """The add that P's output (through Identity, and Cast under mixed precision) joins."""
    frontier, seen = [Tensor(p, 0)], set()
    while frontier:
        t = frontier.pop()
        if t in seen:
            continue
        seen.add(t)
        for n, _ in body.ir.consumers(t):
            if body.ir.op(n) in _ADD_OPS:
                return n
            if body.ir.op(n) in _CASTS:
                frontier.append(Tensor(n, 0))
    return None


def _source(body: _Body, t: Tensor) -> Tensor:
    """``t`` followed back through Identity and Cast."""
    t = body.ir.canonical(t)
    while body.ir.op(t[0]) in _CASTS:
        t = body.ir.canonical(body.ir.data_input(t[0], 0))
    return t


def _accumulated_output(body: _Body, p: str) -> int | None:
    """The body output i such that P's output is added to argument i and returned as i."""
    add = _adder(body, p)
    if add is None:
        return None
    i = body.output_of(Tensor(add, 0))
    if i is None:
        return None
    if any(body.arg_index(t) == i for t in body.ir.data_inputs(add)):
        return i
    return None


def _terms(body: _Body, i: int) -> list[Tensor] | None:
    """The terms added to argument i (besides the argument itself) in the body."""
    add = body.ir.canonical(body.rets[i])[0]
    if body.ir.op(add) not in _ADD_OPS:
        return None
    return [t for t in body.ir.data_inputs(add) if body.arg_index(t) != i]


def _body_shapes(body: _Body, variables: dict[str, VariableInfo]) -> dict:
    """Static dtypes and shapes inside a body (θ's handle argument given θ's shape)."""
    try:
        return infer_shapes(body.graph_def, {
            arg: VariableInfo(placeholder=arg, name=v.name, shape=v.shape, dtype=v.dtype,
                              trainable=v.trainable) for arg, v in variables.items()})
    except (ValueError, TypeError, KeyError, tf.errors.OpError):
        return {}
