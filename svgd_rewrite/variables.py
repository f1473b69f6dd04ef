"""Variable queries shared by the analysis, the loaders and the loop matcher: who writes a
variable, who reads its value (past views), whether a control-flow body writes it, whether a
step trains at all. Structural, never by node name."""
from __future__ import annotations

from .ir import GraphIR, Tensor
from .load import LoadedStep
from .registry import (CONTROL_FLOW_BODY_ATTRS, CONTROL_FLOW_OPS, HANDLE_ONLY_OPS, LOOP_OPS,
                       MULTI_IDENTITY_OPS, PASS_THROUGH_OPS, SHAPE_OPS, VARIABLE_READ_OPS,
                       VIEW_OPS, WRITE_OP_PREFIXES)


def _is_write(op: str) -> bool:
    return op.startswith(WRITE_OP_PREFIXES)


def variable_uses(ir: GraphIR, placeholder: str) -> tuple[list[str], list[tuple[str, int]]]:
    """(write ops, value consumers) of the variable behind ``placeholder``.

    Value consumers are ``(node, slot)`` pairs past the read and view ops; an op that reads
    the handle directly (e.g. ``ResourceGather``) is a value consumer too.
    """
    writes: list[str] = []
    consumers: list[tuple[str, int]] = []
    values: list[Tensor] = []
    seen: set[Tensor] = set()
    for node, slot in handle_consumers(ir, placeholder):
        op = ir.op(node)
        if op in PASS_THROUGH_OPS:
            continue  # the handle passed on (its consumers are listed too)
        if op in VARIABLE_READ_OPS:
            values.append((node, 0))
        elif _is_write(op) or (op in CONTROL_FLOW_OPS and _body_writes(ir, ir.node(node), slot)):
            writes.append(node)
        elif op in HANDLE_ONLY_OPS:
            continue
        else:
            consumers.append((node, slot))
    while values:
        v = values.pop()
        if v in seen:
            continue
        seen.add(v)
        for node, slot in ir.consumers(v):
            if ir.op(node) in VIEW_OPS:
                values.append((node, 0))
            elif ir.op(node) in MULTI_IDENTITY_OPS:
                values.append((node, slot))
            elif ir.op(node) in SHAPE_OPS:
                continue  # reads θ's shape only
            else:
                consumers.append((node, slot))
    order = ir.order
    return sorted(set(writes), key=order.get), sorted(set(consumers), key=lambda c: (order[c[0]], c[1]))


def handle_consumers(ir: GraphIR, placeholder: str) -> list[tuple[str, int]]:
    """(node, slot) pairs that read the variable's handle, looking through ``Identity`` (which
    is listed too: for a ref variable it is also a read)."""
    out, handles, seen = [], [(placeholder, 0)], set()
    while handles:
        h = handles.pop()
        if h in seen:
            continue
        seen.add(h)
        for node, slot in ir.consumers(h):
            if ir.op(node) in PASS_THROUGH_OPS:
                handles.append((node, 0))
            out.append((node, slot))
    return out


def variable_reads(ir: GraphIR, placeholder: str) -> list[str]:
    """The ``ReadVariableOp`` nodes (and ref-variable ``Identity`` reads) of a variable."""
    return [n for n, _ in handle_consumers(ir, placeholder)
            if ir.op(n) in VARIABLE_READ_OPS or ir.op(n) in PASS_THROUGH_OPS]


def _body_writes(ir: GraphIR, nd, slot: int, depth: int = 0) -> bool:
    """True when the control-flow op ``nd`` writes the resource it reads at input ``slot``
    inside one of its bodies (e.g. LossScaleOptimizer's update under ``If``)."""
    if depth > 8 or nd.op not in CONTROL_FLOW_BODY_ATTRS:
        return False
    index = slot if nd.op in LOOP_OPS else slot - 1
    names = []
    for attr in CONTROL_FLOW_BODY_ATTRS[nd.op]:
        value = nd.attr[attr]
        names += [f.name for f in value.list.func] if value.list.func else [value.func.name]
    return any(_function_writes(ir, name, index, depth) for name in names)


def _function_writes(ir: GraphIR, name: str, index: int, depth: int) -> bool:
    fdef = ir.functions.get(name)
    if fdef is None or index < 0 or index >= len(fdef.signature.input_arg):
        return False
    aliases = {fdef.signature.input_arg[index].name}
    for _ in range(2):  # node_defs are not sorted; two passes settle Identity chains
        for n in fdef.node_def:
            srcs = [i.split(":")[0] for i in n.input if not i.startswith("^")]
            if n.op in PASS_THROUGH_OPS and srcs and srcs[0] in aliases:
                aliases.add(n.name)
    for n in fdef.node_def:
        srcs = [i.split(":")[0] for i in n.input if not i.startswith("^")]
        if _is_write(n.op) and srcs and srcs[0] in aliases:
            return True
        if n.op in CONTROL_FLOW_BODY_ATTRS:
            for k, src in enumerate(srcs):
                if src in aliases and _body_writes(ir, n, k, depth + 1):
                    return True
    return False


def trains(step: LoadedStep) -> bool:
    """True when the step writes at least one trainable variable (it applies gradients)."""
    ir = GraphIR(step.graph_def)
    scope = step.update_scope
    return any(w for p, v in step.variables.items() if v.trainable
               for w in variable_uses(ir, p)[0] if scope is None or w in scope)
