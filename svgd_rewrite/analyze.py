"""Analyze stage: find θ leaves, their V_θ→σ consumers, their updates and each site's P.

Identification is structural: follow θ's read through view ops to a consumer F;
for a registry op, P is a gradient op of a registered type that reads F's other operand x,
whose g input has F as an ancestor, and that lies on θ's update path (port-aware through
IdentityN). Node names are never used.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

import tensorflow as tf

from .errors import NoGradientsError, NoTrainableVariablesError
from .ir import GraphIR, Tensor
from .load import Distribution, LoadedStep, VariableInfo
from .loop_match import LoopAnalysis
from .proofs import NO_DATA_BATCH, DataOrigin, carries_state, find_loss_scale, layer_output
from .sites import Consumer, Match, consumer_reason
from .variables import variable_reads, variable_uses
from .registry import (LOOP_OPS,
                       REGISTRY, VARIABLE_READ_OPS)
from .shapes import TensorInfo, infer_shapes

log = logging.getLogger(__name__)

MAX_STATE_LEVELS = 4  # optimizer state read by other state read by θ's update, ...


@dataclass
class Analysis:
    """Everything the plan stage needs, computed once."""

    ir: GraphIR
    shapes: dict[str, TensorInfo]
    variables: dict[str, VariableInfo]
    writes: dict[str, list[str]]  # variable placeholder -> write ops
    forward: list[Consumer]  # V_θ→σ nodes: matched sites and forward consumers kept as identity
    stateful_optimizer_vars: list[str] = field(default_factory=list)
    loss_scale: Tensor | None = None  # the loss-scale read that seeds every float16 g
    loss_scale_variable: str | None = None  # how the report names the loss scale
    loss_scale_proven: bool = False  # found by ``proofs.find_loss_scale`` (every g is scaled)
    distribution: Distribution | None = None  # tf.distribute: the step's replicas
    keys: dict[str, str] = field(default_factory=dict)  # θ's placeholder -> its state key


def analyze(step: LoadedStep) -> Analysis:
    """Find every site and its P; classify the other consumers of trainable variables.

    The steps: the variables' uses (``_uses``), their update paths through optimizer state
    (``UpdatePaths``), each consumer matched and proven (``_match_consumers``), the members of
    V_θ→σ kept (``_forward``), optimizer state fed by P (``_optimizer_state``), the loss scale.
    """
    ir = GraphIR(step.graph_def)
    shapes = infer_shapes(step.graph_def, step.variables)
    trainable = {p: v for p, v in step.variables.items() if v.trainable}
    if not trainable:
        raise NoTrainableVariablesError(
            "the step reads no trainable variable: pass a training step that reads and updates "
            "trainable tf.Variables")
    writes, consumers = _uses(ir, step, trainable)
    paths = UpdatePaths(ir, step, trainable, writes)
    matched, looped, reach = _match_consumers(ir, step, shapes, consumers, paths)
    forward = _forward(ir, step, matched, looped, consumers, reach)
    stateful = _optimizer_state(ir, step, trainable, writes, forward)
    site_gs = [c.output.g if c.output else c.match.g for c in forward
               if c.match and c.loop is None]
    proven = find_loss_scale(ir, lambda t: _shape(shapes, t), lambda t: _dtype(shapes, t),
                             site_gs, step.variables, paths.feeds_any)
    loss_scale = ((proven.tensor, proven.label) if proven
                  else _find_loss_scale(ir, shapes, step, site_gs))
    return Analysis(ir=ir, shapes=shapes, variables=step.variables, writes=writes,
                    forward=forward, stateful_optimizer_vars=stateful,
                    loss_scale=loss_scale[0] if loss_scale else None,
                    loss_scale_variable=loss_scale[1] if loss_scale else None,
                    loss_scale_proven=proven is not None,
                    distribution=step.distribution, keys=dict(step.variable_keys))


def _shape(shapes, t):
    return shapes[Tensor(*t)][1] if Tensor(*t) in shapes else None


def _dtype(shapes, t):
    return shapes[Tensor(*t)][0] if Tensor(*t) in shapes else None


def _uses(ir: GraphIR, step: LoadedStep, trainable: dict):
    """(writes, value consumers) per variable placeholder; ``NoGradientsError`` when the step
    updates no trainable variable."""
    writes: dict[str, list[str]] = {}
    consumers: dict[str, list[tuple[str, int]]] = {}
    for placeholder in step.variables:
        writes[placeholder], consumers[placeholder] = variable_uses(ir, placeholder)
        if step.update_scope is not None:  # e.g. a TF1 graph: only its train op's updates
            writes[placeholder] = [w for w in writes[placeholder] if w in step.update_scope]
    if not any(writes[p] for p in trainable):
        raise NoGradientsError(
            "the step updates no trainable variable (no gradients are applied): pass the "
            "training step, not an inference function")
    return writes, consumers


class UpdatePaths:
    """Which trained variables' updates each node feeds (port-aware through IdentityN).

    An optimizer with state writes the gradient into a slot variable (momentum, Adam's m and
    v, ...) that θ's update then reads: a write of a non-trainable variable whose reads feed
    θ's update feeds it too. One linear pass per level of such state (two for Adam).
    """

    def __init__(self, ir: GraphIR, step: LoadedStep, trainable: dict, writes: dict):
        self.ir, self.writes = ir, writes
        self.order = sorted(trainable, key=ir.order.get)
        self.bit = {p: i for i, p in enumerate(self.order)}
        sinks: dict[str, int] = {}
        for p in self.order:
            for w in writes[p]:
                sinks[w] = sinks.get(w, 0) | (1 << self.bit[p])
        state_reads = {p: variable_reads(ir, p) for p in step.variables
                       if p not in trainable and writes[p]}
        self.feeds = ir.downstream_bits(sinks)
        for _ in range(MAX_STATE_LEVELS):
            if not self._add_state(state_reads, sinks):
                break
            self.feeds = ir.downstream_bits(sinks)

    def _add_state(self, state_reads: dict, sinks: dict) -> bool:
        changed = False
        for p, reads in state_reads.items():
            bits = 0
            for r in reads:
                bits |= self.feeds.get(r, 0)
            for w in self.writes[p]:
                if bits & ~sinks.get(w, 0):
                    sinks[w] = sinks.get(w, 0) | bits
                    changed = True
        return changed

    def feeds_any(self, node: str) -> bool:
        return bool(self.feeds.get(node, 0))

    def on_path(self, p: str, node: str) -> bool:
        """``node`` feeds θ's update (always true for a variable the step does not write)."""
        return not self.writes[p] or bool(self.feeds.get(node, 0) >> self.bit[p] & 1)

    def pool(self, p: str, pool: list) -> list:
        """The candidates in ``pool`` whose output feeds p's update (one bit test each: no
        per-variable index, whose size grows with variables × candidates)."""
        return [entry for entry in pool if self.on_path(p, entry[0])]

    def tensor_feeds(self, p: str, t: Tensor) -> bool:
        """Tensor ``t`` (an output of a gradient loop) reaches θ's update."""
        return bool(self.writes[p]) and any(
            self.feeds.get(n, 0) >> self.bit[p] & 1
            for a in self.ir.aliases(t) for n, _ in self.ir.consumers(a))


@dataclass
class _Reach:
    """Which consumers of θ each tensor depends on (one pass): ``depends(t, f)``."""

    ir: GraphIR
    bits: dict
    source: dict[str, int]

    def depends(self, t: Tensor, f: str) -> bool:
        return bool(self.ir.bits_of(self.bits, t) >> self.source[f] & 1)

    def node_depends(self, node: str, f: str) -> bool:
        return bool(self.bits.get(node, 0) >> self.source[f] & 1)


def _match_consumers(ir: GraphIR, step: LoadedStep, shapes, consumers: dict,
                     paths: UpdatePaths) -> tuple[list[Consumer], list[Consumer], _Reach]:
    """Every consumer of a trained variable's value, matched to its P and proven, or given a
    reason (consumers inside loops through ``LoopAnalysis``)."""
    candidates = [(p, node, slot) for p in paths.order for node, slot in consumers[p]]
    source: dict[str, int] = {}
    for _, node, _ in candidates:
        source.setdefault(node, len(source))
    reach = _Reach(ir, ir.reach_bits(source), source)
    loops = LoopAnalysis(ir, step.variables, paths.tensor_feeds)
    origin = DataOrigin(ir, set(step.variables))
    matched: list[Consumer] = []
    looped: list[Consumer] = []
    for p, node, slot in candidates:
        if ir.op(node) in LOOP_OPS:
            found = loops.consumers(node, slot, p)
            looped += found
            if found:
                continue
        c = Consumer(node=node, op=ir.op(node), slot=slot, variable=p)
        _match(ir, c, on_path_pool=lambda x, op, pool, p=p: paths.pool(p, pool),
               on_update_path=lambda d, p=p: paths.on_path(p, d),
               depends_on_f=lambda t, f=node: reach.depends(t, f),
               shape_of=lambda t: _shape(shapes, t))
        if c.match is not None:
            _prove(ir, c, origin, lambda t: _shape(shapes, t),
                   lambda t, f=node: reach.depends(t, f))
        if c.match is not None:  # proven
            c.g_dtype = shapes[Tensor(*c.match.g)][0]
            c.p_node = ir.node(c.match.grad_op)
            c.p_dtype, c.p_shape = shapes.get(Tensor(c.match.grad_op, 0), (None, None))
        matched.append(c)
    return matched, looped, reach


def _forward(ir: GraphIR, step: LoadedStep, consumers_found: list[Consumer],
             looped: list[Consumer], consumers: dict, reach: _Reach) -> list[Consumer]:
    """The members of V_θ→σ: matched sites, and the forward consumers kept as identity (not a
    gradient op, not part of the update, not the input-gradient op of a forward op)."""
    matched_g = [c.match.g for c in consumers_found if c.match]
    backward = ir.descendants(matched_g)
    reportable = ir.ancestors([Tensor.parse(t) for t in step.output_tensors] + matched_g)
    forward: list[Consumer] = []
    for c in consumers_found:
        if c.match is not None:
            forward.append(c)
            continue
        if c.node in backward or c.node not in reportable:
            continue  # a gradient op, or part of the update: not a member of V_θ→σ
        siblings = [n for n, _ in consumers[c.variable] if n != c.node and ir.op(n) == c.op]
        if any(reach.node_depends(c.node, n) for n in siblings):
            continue  # the input-gradient op of a forward op with no P, e.g. MatMul(g, Wᵀ)
        forward.append(c)
    gradient_loops = {c.loop.backward_loop for c in looped if c.loop is not None}
    forward += [c for c in looped if c.at not in backward and c.at not in gradient_loops]
    for c in forward:
        c.param_size = _size(step.variables[c.variable].shape)
    forward.sort(key=lambda c: (ir.order[c.at], c.slot, c.node))
    return forward


def _optimizer_state(ir: GraphIR, step: LoadedStep, trainable: dict, writes: dict,
                     forward: list[Consumer]) -> list[str]:
    """The optimizer's per-parameter slots (shaped like a trained variable, not counters or a
    loss scale) written from P's outputs whose previous value reaches an update (momentum,
    Adam, ...; not a slot the step overwrites first: ``carries_state``)."""
    p_outputs = sorted({Tensor.parse(c.loop.backward_loop if c.loop else c.match.grad_op)
                        for c in forward if c.match})
    downstream = ir.descendants(p_outputs)
    trained_shapes = {tuple(v.shape) for p, v in trainable.items() if writes[p]}
    slots = {p: ws for p, ws in writes.items()
             if p not in trainable and any(w in downstream for w in ws)
             and len(step.variables[p].shape) > 0
             and tuple(step.variables[p].shape) in trained_shapes}
    held = carries_state(ir, slots, {w for ws in writes.values() for w in ws})
    return sorted(step.variables[p].name for p in held)


def _prove(ir: GraphIR, c: Consumer, origin: DataOrigin, shape_of, depends_on_f) -> None:
    """Keep ``c.match`` only when the site is proven (``proofs``): σ''s batch axis is a data
    batch, and σ' is the layer output (``c.output``); otherwise record the reason."""
    x_slot = REGISTRY[c.op].x_slot(c.slot)
    x = ir.canonical(ir.data_input(c.node, x_slot)) if x_slot is not None else None
    if x is not None and origin.variables_only(x):
        c.match, c.reason = None, NO_DATA_BATCH
        return
    out = layer_output(ir, shape_of, c.node, x, c.match.g, depends_on_f)
    if isinstance(out, str):
        c.match, c.reason = None, out
    else:
        c.output = out


def _size(shape) -> int:
    n = 1
    for d in shape:
        n *= d if d is not None else 1
    return n


def _find_loss_scale(ir: GraphIR, shapes, step: LoadedStep, gs: list[Tensor]):
    """The read of the loss-scale variable when float16 gradients are scaled (mixed precision).

    Structurally: a scalar float non-trainable variable whose read is an ancestor of every
    float16 upstream gradient g (LossScaleOptimizer multiplies the loss by it).
    """
    half = [g for g in gs if shapes[Tensor(*g)][0] == tf.float16]
    if not half:
        return None
    reads: dict[str, tuple[str, str]] = {}  # read node -> (variable placeholder, name)
    for p, info in sorted(step.variables.items()):
        if info.trainable or info.shape != () or not info.dtype.is_floating:
            continue
        for node, _ in ir.consumers((p, 0)):
            if ir.op(node) in VARIABLE_READ_OPS:
                reads[node] = (p, info.name)
    bit = {node: i for i, node in enumerate(reads)}
    reach = ir.reach_bits(bit)
    seeding = [n for n in reads if all(ir.bits_of(reach, g) >> bit[n] & 1 for g in half)]
    if len({reads[n] for n in seeding}) != 1:
        return None
    return (seeding[0], 0), reads[seeding[0]][1]


def _own_gradient(ir: GraphIR, c: Consumer, found: list[Match], shape_of) -> list[Match]:
    """Of several P candidates (sibling layers reading the same x, whose gradients all reach
    every update through a shared ``If`` or clipping), keep the ones whose g is the gradient of
    F's own output: g has the shape of F's output, and g is also read by F's input-gradient op
    (the op that reads g and θ's view)."""
    out_shape = shape_of((c.node, 0))
    if out_shape is not None and out_shape.is_fully_defined():
        same = [m for m in found if (shape_of(m.g) is not None
                                     and shape_of(m.g).is_fully_defined()
                                     and shape_of(m.g).as_list() == out_shape.as_list())]
        found = same or found
    if len(found) > 1:
        theta = set(ir.aliases(ir.canonical(ir.data_input(c.node, c.slot))))

        def beside_theta(m: Match) -> bool:
            return any(n != c.node and any(t in theta for t in ir.data_inputs(n))
                       for a in ir.aliases(ir.canonical(m.g)) for n, _ in ir.consumers(a))

        found = [m for m in found if beside_theta(m)] or found
    return found


@dataclass(frozen=True)
class Candidate:
    """A possible P of a consumer: gradient op ``grad_op`` with g at input ``g_slot``;
    ``x_slot``/``x_at``: the input of P that must read F's other operand x, and the one that
    does (None when P does not read x)."""

    grad_op: str
    g_slot: int
    g: Tensor
    x_slot: int | None
    x_at: int | None


@dataclass(frozen=True)
class MatchContext:
    """What the filters ask of the graph: ``on_update_path(node)`` (the node feeds θ's
    update), ``depends_on_f(tensor)`` (F is among the tensor's ancestors), ``shape_of``, and
    ``on_path_pool(x, op, pool)`` (the candidates of ``pool`` on θ's update path)."""

    ir: GraphIR
    on_update_path: Callable[[str], bool]
    depends_on_f: Callable[[Tensor], bool]
    shape_of: Callable[[Tensor], object] = lambda t: None
    on_path_pool: Callable = lambda x, op, pool: pool


@dataclass(frozen=True)
class MatchFilter:
    """A named condition every P satisfies; ``reason`` is the skip reason reported when it
    leaves no candidate. A new constraint is one entry of ``MATCH_FILTERS``."""

    name: str
    keep: Callable[[MatchContext, Consumer, Tensor | None, Candidate], bool]
    reason: str


_NO_P = "no gradient op P found that turns its output gradient into θ's update"

MATCH_FILTERS: tuple[MatchFilter, ...] = (
    MatchFilter("not F itself", lambda ctx, c, x, m: m.grad_op != c.node, _NO_P),
    MatchFilter("feeds θ's update", lambda ctx, c, x, m: ctx.on_update_path(m.grad_op), _NO_P),
    MatchFilter("reads x where P's op expects it",
                lambda ctx, c, x, m: m.x_slot is None or m.x_slot == m.x_at,
                _NO_P + " (no candidate reads F's other operand in the slot its op expects)"),
    MatchFilter("g is not x", lambda ctx, c, x, m: x is None or ctx.ir.canonical(m.g) != x,
                _NO_P),
    MatchFilter("g is a gradient of F's output", lambda ctx, c, x, m: ctx.depends_on_f(m.g),
                _NO_P + " (no candidate's g depends on F's output)"),
)


def _candidates(ctx: MatchContext, c: Consumer, x: Tensor | None) -> list[Candidate]:
    """Every (gradient op, slots) of the registry's P op types for F: the consumers of x
    (on θ's update path) when P reads x, else every node of the op type."""
    ir, spec = ctx.ir, REGISTRY[c.op]
    out = []
    for grad in spec.grad_ops:
        if x is not None:
            pool = ctx.on_path_pool(x, grad.op, ir.consumers_of_op(x, grad.op))
        else:
            pool = [(n, None) for n in ir.nodes_of_op(grad.op)]
        for d, x_at in pool:
            for xs, gs in grad.slots:
                out.append(Candidate(grad_op=d, g_slot=gs, g=Tensor(*ir.data_input(d, gs)),
                                     x_slot=xs, x_at=x_at))
    return out


def _match(ir: GraphIR, c: Consumer, on_update_path, depends_on_f, shape_of=lambda t: None,
           on_path_pool=lambda x, op, pool: pool) -> None:
    """Fill ``c.match`` (P found) or ``c.reason`` for a consumer of θ: candidate generation,
    then ``MATCH_FILTERS`` in order (the first that leaves none gives the reason), then the
    tie-break by F's own gradient (``_own_gradient``)."""
    spec = REGISTRY.get(c.op)
    if spec is None:
        c.reason = consumer_reason(ir, c.node)
        return
    if c.slot not in spec.param_slots:
        c.reason = f"θ enters {c.op} as input {c.slot}, in which it is not a linear parameter"
        return
    ctx = MatchContext(ir=ir, on_update_path=on_update_path, depends_on_f=depends_on_f,
                       shape_of=shape_of, on_path_pool=on_path_pool)
    x_slot = spec.x_slot(c.slot)
    x = ir.canonical(ir.data_input(c.node, x_slot)) if x_slot is not None else None
    candidates = _candidates(ctx, c, x)
    for f in MATCH_FILTERS:
        candidates = [m for m in candidates if f.keep(ctx, c, x, m)]
        if not candidates:
            c.reason = f.reason
            return
    found = sorted({Match(grad_op=m.grad_op, g_slot=m.g_slot, g=m.g) for m in candidates},
                   key=lambda m: (ir.order[m.grad_op], m.g_slot))
    if len(found) > 1:
        found = _own_gradient(ir, c, found, shape_of)
    if len(found) == 1:
        c.match = found[0]
    else:
        c.reason = ("ambiguous gradient op: " + ", ".join(m.grad_op for m in found)
                    + " all qualify as P")
