"""Graph validation: input graphs before the analysis, rewritten graphs after the surgery.

An input graph that TensorFlow itself cannot import is bad input (``LoadError``: exit 2).
A rewritten graph that fails validation is a bug of the surgery (``SurgeryError``: exit 1,
with the site named), and nothing is written.
"""
from __future__ import annotations


import tensorflow as tf
from tensorflow.core.framework import graph_pb2

from .edits import EditLog
from .errors import LoadError, SurgeryError, first_line, one_line
from .inline import MAX_DEPTH
from .registry import CALL_OPS
from .ir import Tensor, parse_input, without_large_constants

IMPORT_ERRORS = (ValueError, TypeError, KeyError, IndexError, tf.errors.OpError)


def _dangling(graph_def: graph_pb2.GraphDef) -> str | None:
    """The first input that names no node or a malformed port, as a message; None if none."""
    names = {n.name for n in graph_def.node}
    for node in graph_def.node:
        for inp in node.input:
            try:
                src, port, _ = parse_input(inp)
            except ValueError:
                return f"node {node.name!r} has a malformed input {inp!r}"
            if src not in names:
                return f"node {node.name!r} reads missing node {src!r}"
            if port < -1:
                return f"node {node.name!r} has a malformed input {inp!r}"
    return None


def _import(graph_def: graph_pb2.GraphDef) -> None:
    with tf.Graph().as_default():
        tf.graph_util.import_graph_def(without_large_constants(graph_def), name="")


def _called(attrs) -> set[str]:
    """Function names an op's attributes refer to (``f``, ``body``, ``then_branch``, ...)."""
    out = set()
    for value in attrs.values():
        if value.HasField("func"):
            out.add(value.func.name)
        out.update(f.name for f in value.list.func)
    return out


def library_cycle(library) -> list[str] | None:
    """A cycle in a function library's call graph (a function calling itself, directly or
    through others), as the list of its names, or None. TensorFlow's importer recurses
    without a bound on such a library and crashes the process: it is checked first, on the
    protobuf alone."""
    names = {f.signature.name for f in library.function}
    calls = {f.signature.name: sorted((_called(f.attr) | {c for n in f.node_def
                                                          for c in _called(n.attr)}
                                       | {n.op for n in f.node_def}) & names)
             for f in library.function}
    state: dict[str, int] = {}
    for root in sorted(calls):
        if state.get(root):
            continue
        stack, path = [(root, iter(calls[root]))], [root]
        state[root] = 1
        while stack:
            name, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[name] = 2
                stack.pop()
                path.pop()
                continue
            if state.get(child) == 1:
                return path[path.index(child):] + [child]
            if not state.get(child):
                state[child] = 1
                stack.append((child, iter(calls[child])))
                path.append(child)
    return None


def check_library(library, what: str) -> None:
    """``LoadError`` for a recursive function library, or one whose calls nest deeper than
    the inliner goes (``inline.MAX_DEPTH``), before TensorFlow sees it: read from the
    protobuf alone, so refusing costs no more than parsing it."""
    cycle = library_cycle(library)
    if cycle is not None:
        shown = " → ".join(one_line(c)[:60] for c in cycle[:6])
        raise LoadError(f"{one_line(what)} has a recursive function library ({shown}): "
                        "TensorFlow cannot import it; export the graph again")
    depth = call_depth(library)
    if depth > MAX_DEPTH:
        raise LoadError(f"{one_line(what)}: its functions call each other {depth} levels deep, "
                        f"over the limit of {MAX_DEPTH}: trace the train step with fewer nested "
                        "tf.function calls (call plain Python functions inside it) and save "
                        "it again")


def call_depth(library) -> int:
    """The longest chain of function calls (``PartitionedCall``-style ops and direct calls)
    in an acyclic function library: 1 for a function that calls none."""
    names = {f.signature.name for f in library.function}
    calls = {f.signature.name: sorted({c for n in f.node_def if n.op in CALL_OPS
                                       for c in _called(n.attr)} | {n.op for n in f.node_def}
                                      & names) for f in library.function}
    depth: dict[str, int] = {}
    for root in sorted(calls):
        stack = [root]
        while stack:
            name = stack[-1]
            pending = [c for c in calls[name] if c not in depth]
            if pending:
                stack.extend(pending)
                continue
            stack.pop()
            depth[name] = 1 + max((depth[c] for c in calls[name]), default=0)
    return max(depth.values(), default=0)


def check_input_graph(graph_def: graph_pb2.GraphDef, what: str) -> None:
    """Refuse (``LoadError``) a GraphDef whose function library is recursive, that names
    missing nodes or that TensorFlow cannot import (unknown ops, missing attributes, wrong
    input counts, cycles, missing functions)."""
    check_library(graph_def.library, what)
    problem = _dangling(graph_def)
    if problem is None:
        try:
            _import(graph_def)
        except IMPORT_ERRORS as e:
            problem = first_line(e)
    if problem is not None:
        raise LoadError(f"{one_line(what)} is not a valid TensorFlow graph ({one_line(problem)}): "
                        "export the graph again")


def _local_graph(graph_def: graph_pb2.GraphDef, members: set[str],
                 types: dict[str, tuple[tf.DType, tf.TensorShape]]) -> graph_pb2.GraphDef:
    """The ``members`` nodes with every tensor they read from outside fed by a placeholder of
    that tensor's dtype and shape (control inputs from outside dropped)."""
    local = graph_pb2.GraphDef()
    local.versions.CopyFrom(graph_def.versions)
    local.library.CopyFrom(graph_def.library)
    fed: dict[Tensor, str] = {}
    for node in graph_def.node:
        if node.name not in members:
            continue
        new = local.node.add()
        new.CopyFrom(node)
        del new.input[:]
        for inp in node.input:
            src, port, control = parse_input(inp)
            if src in members:
                new.input.append(inp)
                continue
            if control:
                continue
            key = Tensor(src, port)
            if key not in fed:
                fed[key] = f"svgd_validate/fed_{len(fed)}"
                dtype, shape = types[key]
                ph = local.node.add(name=fed[key], op="Placeholder")
                ph.attr["dtype"].type = dtype.as_datatype_enum
                ph.attr["shape"].shape.CopyFrom(shape.as_proto())
            new.input.append(fed[key])
    return local


def check_rewritten_graph(graph_def: graph_pb2.GraphDef, edits: EditLog,
                          types: dict[Tensor, tuple[tf.DType, tf.TensorShape]]) -> None:
    """After surgery, against its edit log: no dangling input, every rerouted input reads
    what the log says (every pre-scaled P its ĝ), no node outside the inserted ones reads a
    post-scaled tensor unscaled, and the inserted nodes with the rerouted ones and the grown
    loops import into a scratch graph (dtypes, shapes and attributes checked by TensorFlow)
    with the tensors they read from the rest of the graph fed at their inferred types
    (``types``: dtype and static shape of the original graph's tensors).
    """
    problem = _dangling(graph_def)
    if problem is not None:
        raise SurgeryError(f"the rewritten graph is broken: {problem}")
    by_name = {n.name: n for n in graph_def.node}
    for e in edits.rerouted:
        p = by_name.get(e.node)
        if p is None or e.slot >= len(p.input) or p.input[e.slot] != e.new:
            raise SurgeryError(f"site {e.site}: the gradient op {e.node!r} does not read ĝ "
                               f"({e.new}) at input {e.slot} after the surgery")
    inserted = edits.inserted_nodes()
    scaled = {e.target for e in edits.scaled}
    for node in graph_def.node:
        if node.name in inserted:
            continue
        for inp in node.input:
            if not inp.startswith("^") and (inp in scaled or inp + ":0" in scaled):
                raise SurgeryError(f"{node.name!r} still reads {inp!r} unscaled after the "
                                   "surgery")
    members = set(inserted)
    members |= {e.node for e in edits.rerouted}
    members |= {g.loop for g in edits.grown}
    try:
        _import(_local_graph(graph_def, members, types))
    except IMPORT_ERRORS as e:
        raise SurgeryError(f"the rewritten graph does not import: {first_line(e)}") from None
