"""The diagnostics taps: per site, the tensors of a rewritten step from which θ's virtual
gradient and its plain gradient follow, and the norm ratio ‖virtual‖/‖plain‖ from them.

From the edit log: a post-scaled application's target is the plain gradient and its scaled
copy the virtual one (both are computed by the step). A pre-scaled application's P reads ĝ
(its output is the virtual gradient); the plain one is P reading g. ``Taps.with_ratio`` adds
the ratio to the rewritten GraphDef: the step returns it as it trains, or a read-only cut of
the graph computes it (``build_probe``: no variable is written). Sites inside ``While`` loops
are not tapped.

Reading both gradients of a large kernel at the end of the step costs more than the ratio
needs. A gradient that is a matrix product A·C over a batch axis much shorter than its sides
(a dense kernel's xᵀ·g) has its squared norm from the batch's Gram matrices, ⟨AᵀA, CCᵀ⟩:
small products of P's inputs, which the step can compute before the gradient itself. Where f
scales C's columns (or A's rows), each column's squared norm is cᵀ(AᵀA)c, so the virtual and
plain norms follow from one Gram matrix and one product with it. Else a post-scaled one is
read once: its norms over the axes f is broadcast along. The post-scaled sites' norms are
then multiplied by f and summed per site in one pass.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import attr_value_pb2, graph_pb2, node_def_pb2

from .edits import EditLog
from .ir import GraphIR, Tensor
from .registry import WRITE_OP_PREFIXES
from .tf_compat import output_dtype

RATIO_SCOPE = "svgd_rewrite/diagnostics"
RATIO = f"{RATIO_SCOPE}/ratio:0"  # per site, in ``Taps.sites`` order
GRAM_RATIO = 8  # the Gram form where B²·(m + n) ≤ GRAM_RATIO·m·n (B the batch axis)

_F32 = tf.float32.as_datatype_enum
FORMS = ("gram", "columns")  # tried in this order; else both gradients are read


@dataclass(frozen=True)
class Tap:
    """One application of a site: θ's virtual gradient is ``virtual``; its plain gradient is
    ``plain``, or else ``node`` (P) run on ``inputs`` (P's data inputs, g in ĝ's slot)."""

    virtual: str
    plain: str | None = None
    node: node_def_pb2.NodeDef | None = None
    inputs: tuple[str, ...] = ()


@dataclass
class Taps:
    """Per site, its applications' taps."""

    sites: dict[int, list[Tap]] = field(default_factory=dict)

    def with_ratio(self, graph_def: graph_pb2.GraphDef,
                   shapes: dict[Tensor, tuple[tf.DType, tf.TensorShape]] | None = None,
                   one_pass: bool = True) -> graph_pb2.GraphDef:
        """A copy of ``graph_def`` that also computes ``RATIO``: per site, ‖virtual gradient
        of θ‖ / ‖plain gradient of θ‖ over its applications (0 where the plain one is 0).

        ``shapes`` (static shapes by tensor, ``infer_shapes``) allow the forms in ``FORMS``;
        ``one_pass`` False reads a gradient once with ops XLA compiles (as the portable
        rewrite does), not ``EuclideanNorm``.
        A gradient that is read has its other readers wait for the read, so that they may
        still overwrite its buffer in place (a gradient kept for a later reader costs the
        step a fresh buffer of its size)."""
        graph = _Builder(graph_def, shapes or {}, one_pass)
        halves: dict[int, list[tuple[str, str]]] = {}  # position -> (½‖virtual‖², ½‖plain‖²)
        scaled: list[tuple[int, _Norms]] = []  # (position, norms of a post-scaled one)
        for position, (site, taps) in enumerate(self.sites.items()):
            for k, t in enumerate(taps):
                scope = f"{RATIO_SCOPE}/site_{site}/{k}"
                pair = None
                for form in FORMS:
                    pair = pair or getattr(graph, f"{form}_pair")(t, scope)
                if pair is None:
                    pair = graph.norm(t.virtual), graph.norm(t.plain or graph.rerun(t, scope))
                if isinstance(pair, _Norms):
                    scaled.append((position, pair))
                else:
                    halves.setdefault(position, []).append(pair)
        totals = graph.totals(len(self.sites), halves, scaled)
        quotient = graph.add(f"{RATIO_SCOPE}/quotient", "DivNoNan", totals, T=_F32)
        graph.add(RATIO.split(":")[0], "Sqrt", [quotient], T=_F32)
        graph.wait_for_norms()
        return graph.out


@dataclass(frozen=True)
class _Norms:
    """A post-scaled application's plain gradient as ``size`` norms (of its slices along the
    axes f is broadcast along) and f, both vectors: the virtual one's norms are their
    product."""

    norms: str
    f: str
    size: int


class _Builder:
    """Adds the ratio's nodes to a copy of a GraphDef. A norm read directly or in the Gram
    form of a pre-scaled site is a half squared norm (``L2Loss``'s convention); a post-scaled
    site's are ``_Norms`` (``totals`` brings both to squared norms)."""

    def __init__(self, graph_def: graph_pb2.GraphDef, shapes: dict, one_pass: bool):
        self.one_pass = one_pass
        self.out = graph_pb2.GraphDef()
        self.out.CopyFrom(graph_def)
        self.nodes = {n.name: n for n in self.out.node}
        self.shapes = shapes
        self.norm_of: dict[str, str] = {}  # tensor normed directly -> its norm
        self.readers: dict[str, list[str]] = {}  # a tapped gradient -> the nodes reading it
        self.grams: dict[tuple[str, bool], str] = {}  # (operand, x·xᵀ) -> its Gram matrix

    def add(self, name: str, op: str, inputs: list[str], **attrs) -> str:
        node = self.out.node.add(name=name, op=op, input=inputs)
        for key, value in attrs.items():
            if isinstance(value, bool):
                node.attr[key].b = value
            elif key in ("T", "SrcT", "DstT", "Tidx", "Tshape", "dtype", "Tindices",
                         "Tnumsegments"):
                node.attr[key].type = value
            elif isinstance(value, int):
                node.attr[key].i = value
            else:
                node.attr[key].CopyFrom(value)
        self.nodes[name] = node
        return name

    def const(self, name: str, value, dtype: tf.DType) -> str:
        return self.add(name, "Const", [], dtype=dtype.as_datatype_enum,
                        value=attr_value_pb2.AttrValue(tensor=tf.make_tensor_proto(value, dtype)))

    def sum(self, name: str, terms: list[str]) -> str:
        if len(terms) == 1:
            return terms[0]
        return self.add(name, "AddN", terms, T=_F32, N=len(terms))

    def totals(self, sites: int, halves: dict[int, list[tuple[str, str]]],
               scaled: list[tuple[int, "_Norms"]]) -> list[str]:
        """Per site (by position) its virtual and its plain gradient's squared norms, two
        vectors: the post-scaled norms concatenated and summed per site in one pass each,
        plus twice the half squared norms of the rest."""
        out = []
        if scaled:
            ids = self.const(f"{RATIO_SCOPE}/sites_of_norms",
                             [p for p, n in scaled for _ in range(n.size)], tf.int32)
            count = self.const(f"{RATIO_SCOPE}/sites", sites, tf.int32)
            norms = self._concat("norms", [n.norms for _, n in scaled])
            virtual = self.add(f"{RATIO_SCOPE}/virtual_norms", "Mul",
                               [norms, self._concat("f", [n.f for _, n in scaled])], T=_F32)
            for part, x in (("virtual", virtual), ("plain", norms)):
                out.append(self.add(f"{RATIO_SCOPE}/{part}", "UnsortedSegmentSum", [
                    self.add(f"{RATIO_SCOPE}/{part}_squares", "Square", [x], T=_F32), ids,
                    count], T=_F32, Tindices=tf.int32.as_datatype_enum,
                    Tnumsegments=tf.int32.as_datatype_enum))
        if halves:
            zero = self.const(f"{RATIO_SCOPE}/zero", 0.0, tf.float32)
            two = self.const(f"{RATIO_SCOPE}/two", 2.0, tf.float32)
            for side, part in enumerate(("virtual", "plain")):
                per_site = [self.sum(f"{RATIO_SCOPE}/position_{p}/{part}", [h[side] for h in
                                                                           halves[p]])
                            if p in halves else zero for p in range(sites)]
                total = self.add(f"{RATIO_SCOPE}/{part}_halves", "Mul", [self.add(
                    f"{RATIO_SCOPE}/{part}_halves_stacked", "Pack", per_site, T=_F32,
                    N=sites, axis=0), two], T=_F32)
                if scaled:
                    out[side] = self.add(f"{RATIO_SCOPE}/{part}_total", "AddV2",
                                         [out[side], total], T=_F32)
                else:
                    out.append(total)
        return out

    def _concat(self, name: str, vectors: list[str]) -> str:
        if len(vectors) == 1:
            return vectors[0]
        return self.add(f"{RATIO_SCOPE}/{name}", "ConcatV2", vectors + [
            self.const(f"{RATIO_SCOPE}/{name}_axis", 0, tf.int32)], T=_F32, N=len(vectors),
            Tidx=tf.int32.as_datatype_enum)

    def _vector(self, tensor: str, rank: int, name: str) -> str:
        """``tensor`` (of static ``rank``) as a vector."""
        if rank == 1:
            return tensor
        return self.add(name, "Reshape", [tensor, self.const(f"{name}_shape", [-1], tf.int32)],
                        T=_F32, Tshape=tf.int32.as_datatype_enum)

    def norm(self, tensor: str) -> str:
        """½‖tensor‖², read once (its other readers wait for it: ``wait_for_norms``)."""
        tensor = _tensor(tensor)
        if tensor not in self.norm_of:
            name, port = Tensor.parse(tensor)
            x, k = tensor, len(self.norm_of)
            info = self.shapes.get(Tensor(name, port))
            dtype = (info[0].as_datatype_enum if info is not None
                     else output_dtype(self.nodes[name], port))
            if dtype != _F32:
                x = self.add(f"{RATIO_SCOPE}/cast_{k}", "Cast", [x], SrcT=dtype, DstT=_F32,
                             Truncate=False)
            self.norm_of[tensor] = self.add(f"{RATIO_SCOPE}/norm_{k}", "L2Loss", [x], T=_F32)
            self.readers[tensor] = self.readers.get(tensor, []) + [self.norm_of[tensor]]
        return self.norm_of[tensor]

    def columns_pair(self, tap: Tap, scope: str) -> "_Norms | None":
        """A post-scaled application's norms from one pass over the plain gradient: its
        norms over the axes f is broadcast along (f's shape, then, but for its 1s)."""
        f = self._factor(tap)
        st, sf = self._shape(tap.plain or ""), self._shape(f or "")
        if f is None or st is None or sf is None or None in sf or len(sf) > len(st):
            return None
        aligned = [1] * (len(st) - len(sf)) + sf
        if any(d not in (1, t) for d, t in zip(aligned, st)):
            return None
        axes = [k for k, d in enumerate(aligned) if d == 1 and st[k] != 1]
        if not axes:
            return None
        kept = len(st) - len(axes)
        plain, axes = _tensor(tap.plain), self.const(f"{scope}/axes", axes, tf.int32)
        reduce = dict(T=_F32, Tidx=tf.int32.as_datatype_enum, keep_dims=False)
        if self.one_pass:
            norms = read = self.add(f"{scope}/column_norms", "EuclideanNorm", [plain, axes],
                                    **reduce)
        else:
            read = self.add(f"{scope}/squares", "Square", [plain], T=_F32)
            norms = self.add(f"{scope}/column_norms", "Sqrt", [self.add(
                f"{scope}/column_squares", "Sum", [read, axes], **reduce)], T=_F32)
        self.readers[plain] = self.readers.get(plain, []) + [read]
        return _Norms(self._vector(norms, kept, f"{scope}/norms"),
                      self._vector(f, len(sf), f"{scope}/f"), int(np.prod(sf)))

    def rerun(self, tap: Tap, scope: str) -> str:
        """P's copy on g (``tap.inputs``)."""
        copy = self.out.node.add()
        copy.CopyFrom(tap.node)
        copy.name = f"{scope}/plain_gradient"
        copy.input[:] = list(tap.inputs)
        self.nodes[copy.name] = copy
        return f"{copy.name}:0"

    def wait_for_norms(self) -> None:
        for reader in self.out.node:
            if reader.name.startswith(f"{RATIO_SCOPE}/"):
                continue
            waits = {n for i in reader.input if not i.startswith("^")
                     for n in self.readers.get(_tensor(i), ())}
            reader.input.extend(f"^{n}" for n in sorted(waits))

    # --- the Gram form -----------------------------------------------------------------

    def gram_pair(self, tap: Tap, scope: str) -> "tuple[str, str] | _Norms | None":
        """A pre-scaled application's (½‖virtual‖², ½‖plain‖²) in the Gram form, a
        post-scaled one's ``_Norms``; None where it does not apply."""
        if tap.plain is not None:  # post-scaled: virtual = plain · f
            product = self._product(self.nodes.get(Tensor.parse(tap.plain).node))
            f = self._factor(tap)
            side = self._side(product, f) if product is not None and f is not None else None
            if side is None:
                return None
            a, c, ta, tb = product
            if side == "c":  # f scales C's columns: C's columns in the form of AᵀA
                gram, operand, by_rows = self._gram(a, ta, True), c, tb
            else:  # f scales A's rows: A's rows in the form of CCᵀ
                gram, operand, by_rows = self._gram(c, tb, False), a, not ta
            return self._scaled_pair(operand, by_rows, gram, f, scope)
        node = self.nodes.get(Tensor.parse(tap.virtual).node)  # pre-scaled: P(…ĝ…) against P(…g…)
        virtual, plain = self._product(node), self._product(tap.node, tap.inputs)
        if virtual is None or plain is None:
            return None
        return tuple(self._inner(f"{scope}/{part}", self._gram(a, ta, True),
                                 self._gram(c, tb, False))
                     for part, (a, c, ta, tb) in (("virtual", virtual), ("plain", plain)))

    def _scaled_pair(self, operand: str, by_rows: bool, gram: str, f: str,
                     scope: str) -> "_Norms":
        """The norms of G's columns (or rows), those f scales: vᵀKv, v the matching columns
        (``by_rows`` False: B×k) or rows (k×B) of ``operand`` as stored, K = ``gram`` (B×B):
        a product B×B·B×k and a reduction, not the B-fold Gram matrices of both sides."""
        q = self.add(f"{scope}/quadratic", "MatMul",
                     [gram, operand] if not by_rows else [operand, gram], T=_F32)
        squares = self.add(f"{scope}/squares", "Sum", [
            self.add(f"{scope}/products", "Mul", [operand, q], T=_F32),
            self.const(f"{scope}/axis", 1 if by_rows else 0, tf.int32)],
            T=_F32, Tidx=tf.int32.as_datatype_enum, keep_dims=False)
        norms = self.add(f"{scope}/norms", "Sqrt", [  # ≥ 0 but for rounding
            self.add(f"{scope}/nonnegative", "Relu", [squares], T=_F32)], T=_F32)
        sf = self._shape(f)
        return _Norms(norms, self._vector(f, len(sf), f"{scope}/f"), int(np.prod(sf)))

    def _factor(self, tap: Tap) -> str | None:
        """f of a post-scaled application: the scaled copy's other input."""
        scaled = self.nodes.get(Tensor.parse(tap.virtual).node)
        if tap.plain is None or scaled is None or scaled.op != "Mul":
            return None
        f = [i for i in scaled.input[:2] if _tensor(i) != _tensor(tap.plain)]
        return f[0] if len(f) == 1 else None

    def _shape(self, tensor: str) -> list[int | None] | None:
        if not tensor:
            return None
        info = self.shapes.get(Tensor.parse(tensor))
        if info is None or info[0] != tf.float32 or info[1].rank is None:
            return None
        return info[1].as_list()

    def _product(self, node, inputs: tuple[str, ...] | None = None):
        """(a, c, transpose_a, transpose_b) of a float32 MatMul A·C (A = op(a): m×B,
        C = op(c): B×n, all static) where the Gram form is the cheaper; else None."""
        if node is None or node.op != "MatMul":
            return None
        a, c = inputs if inputs is not None else [i for i in node.input if not i.startswith("^")]
        ta, tb = node.attr["transpose_a"].b, node.attr["transpose_b"].b
        sa, sc = self._shape(a), self._shape(c)
        if sa is None or sc is None or len(sa) != 2 or len(sc) != 2 or None in sa + sc:
            return None
        (b, m), (_, n) = (sa if ta else sa[::-1]), (sc if not tb else sc[::-1])
        return (a, c, ta, tb) if b * b * (m + n) <= GRAM_RATIO * m * n else None

    def _side(self, product, f: str) -> str | None:
        """Which factor f scales: "c" (C's columns: f is [n] or [1, n]), "a" (A's rows:
        [m, 1]); None for any other shape."""
        a, c, ta, tb = product
        sf, sa, sc = self._shape(f), self._shape(a), self._shape(c)
        if sf is None:
            return None
        m, n = (sa[1] if ta else sa[0]), (sc[0] if tb else sc[1])
        if sf in ([n], [1, n]):
            return "c"
        if sf == [m, 1]:
            return "a"
        return None

    def _gram(self, x: str, transposed: bool, left: bool) -> str:
        """AᵀA (``left``: A = op(x)) or CCᵀ (C = op(x)), B×B; once per operand."""
        outer = transposed == left  # x·xᵀ when True, xᵀ·x when False
        key = (_tensor(x), outer)
        if key not in self.grams:
            self.grams[key] = self.add(f"{RATIO_SCOPE}/gram_{len(self.grams)}", "MatMul",
                                       [x, x], T=_F32, transpose_a=not outer, transpose_b=outer)
        return self.grams[key]

    def _inner(self, name: str, k: str, g: str) -> str:
        """½⟨k, g⟩."""
        axes = self.const(f"{name}_axes", [0, 1], tf.int32)
        total = self.add(f"{name}_sum", "Sum", [self.add(f"{name}_product", "Mul", [k, g],
                                                           T=_F32), axes],
                         T=_F32, Tidx=tf.int32.as_datatype_enum, keep_dims=False)
        return self.add(name, "Mul", [total, self.const(f"{name}_half", 0.5, tf.float32)],
                        T=_F32)


def _tensor(name: str) -> str:
    """A NodeDef data input (or tensor name) as ``node:port``."""
    return str(Tensor.parse(name))


def taps_of(graph_def: graph_pb2.GraphDef, edits: EditLog) -> Taps | None:
    """The taps of a rewritten GraphDef (its top-level sites); None when there are none."""
    by_name = {n.name: n for n in graph_def.node}
    taps = Taps()
    for r in edits.rerouted:
        node = by_name.get(r.node)
        if node is None:  # inside a function body (a While loop)
            continue
        inputs = [i for i in node.input if not i.startswith("^")]
        inputs[r.slot] = r.old
        copy = node_def_pb2.NodeDef()
        copy.CopyFrom(node)
        taps.sites.setdefault(r.site, []).append(Tap(
            virtual=_tensor(r.node), node=copy, inputs=tuple(_tensor(i) for i in inputs)))
    for s in edits.scaled:
        if s.target.split(":")[0] in by_name and s.scaled.split(":")[0] in by_name:
            taps.sites.setdefault(s.site, []).append(Tap(virtual=_tensor(s.scaled),
                                                         plain=_tensor(s.target)))
    return taps if taps.sites else None


def build_probe(graph_def: graph_pb2.GraphDef) -> graph_pb2.GraphDef | None:
    """The read-only probe: ``graph_def`` (a ``Taps.with_ratio`` graph) cut to ``RATIO`` and
    its ancestors (data and control inputs); None when the cut would write a variable."""
    g = GraphIR(graph_def).g
    wanted = RATIO.split(":")[0]
    keep = {wanted} | nx.ancestors(g, wanted)
    out = graph_pb2.GraphDef()
    out.versions.CopyFrom(graph_def.versions)
    out.library.CopyFrom(graph_def.library)
    out.node.extend(n for n in graph_def.node if n.name in keep)
    if any(n.op.startswith(WRITE_OP_PREFIXES) for n in out.node):
        return None
    return out
