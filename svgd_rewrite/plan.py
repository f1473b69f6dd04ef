"""Plan stage: apply the options to the analysis; one accumulator r per trained variable θ.

Every application of θ in the step (a layer called twice, micro-batches, the timesteps of an
unrolled or looped recurrent layer, the copies of tf.distribute replicas) is an
``Application`` with its own g and P; the applications of one θ form one ``PlannedSite`` that
owns one r, updated from mean(g²) over all of their rows. Each application is either
*pre-scaled* (ĝ = g·f feeds P, as in the paper's Figure 6) or *post-scaled* (P keeps reading
g and its parameter-sized output is scaled by f): exact whenever f is constant over every axis
P contracts, which the registry's ``channel_out`` tells per gradient op.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf

from .analyze import Analysis
from .sites import Consumer, Match
from .distribute import group_replicas, logical_name
from .errors import NoSitesError
from .ir import Tensor
from .load import Distribution
from .options import Options, value_at
from .registry import CONV_OPS, ELEMENTWISE_OPS, GATHER_OPS, REGISTRY
from .report import ApplicationReport, MemoryReport, Report, SiteReport, SkippedNode


@dataclass(frozen=True)
class LoopInfo:
    """Where a loop application lives: the forward ``While`` whose body holds F, the gradient
    ``While`` whose body holds P, its body function, and the output of that loop that
    accumulates θ's gradient (Σ_t P(x_t, g_t)). ``g`` is P's g input in FunctionDef syntax."""

    forward_loop: str
    backward_loop: str
    backward_body: str
    grad_output: int
    g: str


@dataclass(frozen=True)
class Application:
    """One use of θ: F, its P (with g), the axes of g that mean(g²) sums, and how f reaches it.

    ``broadcast_shape``: r's shape broadcast over g (pre-scaling; None: it broadcasts as is);
    ``post_shape``: f's shape broadcast over P's output when post-scaled, else None.
    """

    forward: str
    op: str
    slot: int
    match: Match
    g_dtype: tf.DType
    dims: tuple[int | None, ...]
    reduce_axes: tuple[int, ...]
    broadcast_shape: tuple[int, ...] | None
    post_shape: tuple[int, ...] | None = None
    loop: LoopInfo | None = None
    target_dtype: tf.DType | None = None  # the dtype of what post-scaling multiplies
    # σ' is the layer output past position ops (``proofs.LayerOutput``): its gradient g (the
    # statistic's input) and the gradient's position ops from g to P's g input, which a
    # pre-scaled ĝ passes through again (cloned) on its way to P
    layer_g: Tensor | None = None
    chain: tuple[str, ...] = ()

    @property
    def g(self) -> Tensor:
        """Algorithm 1's g: the gradient of σ' as the layer outputs it."""
        return self.layer_g if self.layer_g is not None else self.match.g

    @property
    def post_scaled(self) -> bool:
        return self.post_shape is not None

    @property
    def target(self) -> str:
        """The tensor f scales when post-scaled: P's output, or the gradient loop's output."""
        if self.loop is not None:
            return f"{self.loop.backward_loop}:{self.loop.grad_output}"
        return f"{self.match.grad_op}:0"


@dataclass(frozen=True)
class PlannedSite:
    """One accumulator r (per θ, per replica under tf.distribute) and the applications it
    scales. ``key`` names r in the training state (``svgd/<key>``)."""

    index: int
    variable: str  # θ's placeholder (this replica's component under tf.distribute)
    key: str
    accumulator_shape: tuple[int, ...]
    applications: tuple[Application, ...]
    loss_scale: str | None = None  # divide g by this before squaring (mixed precision)
    replica: int | None = None  # tf.distribute: this copy's replica
    peers: tuple[int, ...] = ()  # tf.distribute: the indices of every replica's copy

    @property
    def g_dtype(self) -> tf.DType:
        return self.applications[0].g_dtype


@dataclass
class Plan:
    sites: list[PlannedSite]
    report: Report
    tensor_types: dict = field(default_factory=dict)  # Tensor -> (dtype, static shape)
    distribution: Distribution | None = None  # tf.distribute: the step's replicas


def _shape_list(shape: tf.TensorShape) -> list[int | None] | None:
    return None if shape.rank is None else shape.as_list()


@dataclass(frozen=True)
class _Geometry:
    """An application's axes: σ''s static dims, the batch and channel axes, and the axes r
    keeps at full granularity (every axis but the batch)."""

    dims: tuple[int | None, ...]
    batch: int
    channel: int

    def kept(self, granularity: str) -> list[int]:
        if granularity == "channel":
            return [self.channel]
        return [a for a in range(len(self.dims)) if a != self.batch]

    def shape(self, granularity: str) -> tuple[int, ...] | None:
        kept = self.kept(granularity)
        if any(self.dims[a] is None for a in kept):
            return None
        return tuple(self.dims[a] for a in kept)


def _geometry(c: Consumer, analysis: Analysis) -> _Geometry | str:
    """σ''s axes, or the reason there are none (σ''s rank unknown)."""
    spec = REGISTRY[c.op]
    if c.loop is not None:
        dims, node = c.loop.dims, c.loop.forward_node
    else:
        out = c.output.node if c.output is not None else c.node
        dims, node = _shape_list(analysis.shapes[Tensor(out, 0)][1]), analysis.ir.node(c.node)
    if dims is None:
        return f"the rank of {c.op}'s output is unknown at trace time"
    rank = len(dims)
    return _Geometry(tuple(dims), spec.batch_axis(node, c.slot, rank),
                     spec.channel_axis(node, c.slot, rank))


def _post_shape(c: Consumer, analysis: Analysis, geo: _Geometry, kept: list[int],
                g_dtype: tf.DType) -> tuple[int, ...] | None:
    """f's broadcast shape over P's output when P keeps every axis r keeps (only the channel
    axis), else None (the application is pre-scaled)."""
    if kept != [geo.channel] or (g_dtype != tf.float32 and c.loop is None):
        return None  # half-precision sites outside loops keep the pre-scaled form
    p_node, out_shape = c.p_node, c.p_shape
    if p_node is None or out_shape is None or out_shape.rank is None:
        return None
    spec = REGISTRY[c.op]
    grad = next((g for g in spec.grad_ops if g.op == p_node.op), None)
    if grad is None:
        return None
    axes = grad.channel_out(p_node, c.match.g_slot, len(geo.dims), geo.channel)
    if axes is None:
        return None
    dims = out_shape.as_list()
    rank = len(dims)
    if any(not -rank <= a < 0 for a in axes):
        return None
    sizes = [dims[a] for a in axes]
    if any(s is None for s in sizes) or int(np.prod(sizes)) != geo.dims[geo.channel]:
        return None
    shape = [1] * rank
    for a, s in zip(axes, sizes):
        shape[a] = s
    return tuple(shape)


@dataclass
class _Group:
    """The applications of one θ (one accumulator) while the plan is being made."""

    variable: str
    key: str
    consumers: list[Consumer] = field(default_factory=list)
    geometries: list[_Geometry] = field(default_factory=list)


def make_plan(analysis: Analysis, options: Options) -> Plan:
    """Choose the sites (``options.ops``), their accumulators, and build the report."""
    groups, skipped = _choose(analysis, options)
    sites, rows, notes = [], [], []
    for group in groups:
        planned = _plan_group(group, analysis, options, len(sites))
        if isinstance(planned, str):
            skipped += [SkippedNode(_shown(c), c.op, analysis.variables[c.variable].name, planned)
                        for c in group.consumers]
            continue
        site, row = planned
        sites.append(site)
        rows.append(row)
        if row.note:
            notes.append(f"site {row.node} ({row.variable}): {row.note}")
    if analysis.distribution is not None:
        sites, rows, skipped = group_replicas(
            sites, rows, skipped, analysis.variables, len(analysis.distribution.devices))
    report = Report(sites=rows, skipped=skipped, memory=_memory(analysis, sites),
                    options=options.to_dict(),
                    warnings=notes + _warnings(analysis, options, sites, rows, skipped))
    return Plan(sites=sites, report=report, tensor_types=analysis.shapes,
                distribution=analysis.distribution)


def _shown(c: Consumer) -> str:
    return c.node if c.loop is None else f"{c.loop.forward_loop}/{c.node}"


def _choose(analysis: Analysis, options: Options) -> tuple[list[_Group], list[SkippedNode]]:
    """The matched consumers grouped per accumulator, and the skipped V_θ→σ nodes."""
    skipped: list[SkippedNode] = []
    groups: dict[tuple, _Group] = {}
    for c in analysis.forward:
        info = analysis.variables[c.variable]
        if c.op in REGISTRY and c.op not in options.ops:  # not chosen: no P is looked for
            hint = "opt-in" if not REGISTRY[c.op].default else "excluded"
            skipped.append(SkippedNode(_shown(c), c.op, info.name,
                                       f"op {c.op} is not in ops ({hint}: add it to ops)"))
            continue
        if c.match is None:
            skipped.append(SkippedNode(_shown(c), c.op, info.name, c.reason or "not transformable"))
            continue
        if not analysis.writes.get(c.variable):
            skipped.append(SkippedNode(_shown(c), c.op, info.name,
                                       "θ is not updated by the step (frozen: trainable=False, "
                                       "or not among the variables the optimizer applies)"))
            continue
        geo = _geometry(c, analysis)
        if isinstance(geo, str):
            skipped.append(SkippedNode(_shown(c), c.op, info.name, geo))
            continue
        family = "bias" if c.op == "BiasAdd" else "kernel"
        key = (c.variable, family) if options.pooling == "variable" else (c.variable, c.node,
                                                                         c.slot)
        group = groups.setdefault(key, _Group(variable=c.variable, key=analysis.keys.get(
            c.variable, info.name)))
        group.consumers.append(c)
        group.geometries.append(geo)
    out = list(groups.values())
    # distinct accumulators with one key (several θ with one name, one r per application, a
    # kernel and a bias role) get distinct keys; a θ's copies on tf.distribute replicas keep
    # one key (they share one mirrored accumulator)
    def identity(g: _Group) -> tuple:
        info = analysis.variables[g.variable]
        owner = info.logical_name if info.replica is not None else g.variable
        first = g.consumers[0]
        return (owner, "bias" if first.op == "BiasAdd" else "kernel") + (
            (logical_name(first.node), first.slot)
            if options.pooling == "application" else ())
    seen: dict[str, list[tuple]] = {}
    for g in out:
        ids = seen.setdefault(g.key, [])
        ident = identity(g)
        if ident not in ids:
            ids.append(ident)
        k = ids.index(ident)
        if k:
            g.key = f"{g.key}#{k}"
    return out, skipped


def _granularity(group: _Group, options: Options) -> tuple[str, str]:
    """The granularity of the group's r and a note when it differs from the option."""
    wanted = options.granularity
    geos = group.geometries
    if wanted == "auto":
        conv = any(c.op in CONV_OPS for c in group.consumers)
        full = geos[0].shape("full")
        params = group.consumers[0].param_size
        wanted = "channel" if conv and (full is None or int(np.prod(full)) > params) else "full"
        note = f"auto: {wanted}"
    else:
        note = ""
    if wanted == "full":
        shapes = {g.shape("full") for g in geos}
        if None in shapes:
            return "channel", "full→channel: a non-batch axis of σ' is unknown at trace time"
        if len(shapes) > 1:
            return "channel", "full→channel: the applications of θ differ in σ''s shape"
        loops = [c for c, g in zip(group.consumers, geos)
                 if c.loop is not None and g.kept("full") != [g.channel]]
        if loops:
            return "channel", ("full→channel: inside a loop f must be constant over every axis "
                               "P sums (the post-scaled form)")
    return wanted, note


def _plan_group(group: _Group, analysis: Analysis, options: Options,
                index: int) -> tuple[PlannedSite, SiteReport] | str:
    """One accumulator for the group, or the reason none can be made."""
    granularity, note = _granularity(group, options)
    shapes = {g.shape(granularity) for g in group.geometries}
    if None in shapes:
        return "the channel axis of σ' has unknown size"
    if len(shapes) > 1:
        return "the applications of θ disagree on r's shape (channels differ)"
    acc_shape = shapes.pop()
    apps, app_rows = [], []
    for c, geo in zip(group.consumers, group.geometries):
        planned = _application(c, geo, analysis, options, granularity)
        if isinstance(planned, str):
            return planned
        apps.append(planned)
        app_rows.append(_application_row(c, planned))
    first = group.consumers[0]
    info = analysis.variables[group.variable]
    half = [a for a in apps if a.g_dtype == tf.float16]
    scale = analysis.loss_scale if half or analysis.loss_scale_proven else None
    site = PlannedSite(index=index, variable=group.variable, key=group.key,
                       accumulator_shape=acc_shape, applications=tuple(apps),
                       loss_scale=str(Tensor(*scale)) if scale else None)
    a0 = app_rows[0]
    row = SiteReport(index=index, node=a0.node, op=first.op, variable=info.name,
                     param_input=first.slot, gradient_op=a0.gradient_op,
                     gradient_op_type=a0.gradient_op_type, gradient_input=a0.gradient_input,
                     upstream_gradient=a0.upstream_gradient, output_shape=a0.output_shape,
                     accumulator_shape=list(acc_shape), granularity=granularity, note=note,
                     variable_node=group.variable, accumulator=f"svgd/{group.key}",
                     applications=app_rows)
    return site, row


def _application(c: Consumer, geo: _Geometry, analysis: Analysis, options: Options,
                 granularity: str) -> Application | str:
    """One application of θ: the axes mean(g²) sums, how f broadcasts over g, whether it is
    post-scaled; or the reason a loop application cannot be made exact."""
    kept = geo.kept(granularity)
    rank = len(geo.dims)
    reduce_axes = tuple(a for a in range(rank) if a not in kept)
    trailing = kept == list(range(rank - len(kept), rank))
    bshape = None if trailing else tuple(geo.dims[a] if a in kept else 1 for a in range(rank))
    svgd = options.transform == "svgd"
    post = (_post_shape(c, analysis, geo, kept, c.g_dtype) if options.post_scale and svgd
            else None)
    if c.loop is not None and post is None and svgd:
        return ("inside a loop only the post-scaled form is exact and P does not keep σ''s "
                "channel axis (or g is not float32)")
    loop = None
    if c.loop is not None:
        loop = LoopInfo(c.loop.forward_loop, c.loop.backward_loop, c.loop.backward_body,
                        c.loop.grad_output, c.loop.g_in_body)
    chain = c.output.chain if c.output else ()
    return Application(forward=c.node, op=c.op, slot=c.slot, match=c.match, g_dtype=c.g_dtype,
                       dims=geo.dims, reduce_axes=reduce_axes, broadcast_shape=bshape,
                       post_shape=post, loop=loop, target_dtype=c.p_dtype or c.g_dtype,
                       layer_g=c.output.g if chain else None, chain=chain)


def _application_row(c: Consumer, a: Application) -> ApplicationReport:
    loop = c.loop
    return ApplicationReport(
        node=_shown(c), gradient_op=c.match.grad_op,
        gradient_op_type=c.p_node.op if c.p_node is not None else "",
        gradient_input=c.match.g_slot,
        upstream_gradient=str(Tensor(*(c.output.g if c.output else c.match.g))),
        output_shape=list(a.dims), scaling="post" if a.post_scaled else "pre",
        loop=loop.forward_loop if loop is not None else "",
        gradient_loop=loop.backward_loop if loop is not None else "",
        gradient_output=loop.grad_output if loop is not None else 0)


def _memory(analysis: Analysis, sites: list[PlannedSite]) -> MemoryReport:
    """Accumulator floats against Adam's and RMSProp's state for the updated parameters
    (mirrored variables and replicated sites count once)."""
    updated = [p for p, v in analysis.variables.items()
               if v.trainable and analysis.writes[p] and not v.replica]
    params = sum(int(np.prod(analysis.variables[p].shape, dtype=np.int64)) for p in updated)
    param_bytes = sum(int(np.prod(analysis.variables[p].shape, dtype=np.int64))
                      * analysis.variables[p].dtype.size for p in updated)
    transformed = {s.variable for s in sites if not s.replica}
    acc_floats = sum(int(np.prod(s.accumulator_shape, dtype=np.int64)) for s in sites
                     if not s.replica)
    return MemoryReport(
        accumulator_floats=acc_floats, accumulator_bytes=4 * acc_floats, params=params,
        transformed_params=sum(int(np.prod(analysis.variables[p].shape, dtype=np.int64))
                               for p in transformed),
        adam_bytes=2 * param_bytes, rmsprop_bytes=param_bytes)


def _warnings(analysis: Analysis, options: Options, sites: list[PlannedSite],
              rows: list[SiteReport], skipped: list[SkippedNode]) -> list[str]:
    """What the user should know about the plan: loss scaling, optimizer state, kernels left
    without virtual gradients, the scale for convolutions and sequences."""
    found = [_loss_scale_warning(analysis, sites), _state_warning(analysis),
             _lost_kernels_warning(analysis, rows, skipped),
             _scale_warning(options, rows, _sequence_sites(analysis, sites))]
    return [w for w in found if w]


def _loss_scale_warning(analysis: Analysis, sites: list[PlannedSite]) -> str | None:
    if any(s.loss_scale for s in sites):
        return (f"loss scaling: accumulators square g / {analysis.loss_scale_variable} (the "
                "loss scale, so r holds the unscaled g²; the optimizer's unscaling then gives "
                "the virtual gradients) and keep their value on steps with non-finite g; a "
                "dynamic loss scale skips the first steps while it halves to fit the "
                "normalized virtual gradients (about s·scale per element)")
    if any(s.g_dtype == tf.float16 for s in sites):
        return ("float16 gradients but no loss-scale variable was found: accumulators square "
                "g as it is")
    return None


def _state_warning(analysis: Analysis) -> str | None:
    state = analysis.stateful_optimizer_vars
    if not state:
        return None
    return ("the virtual gradients feed an optimizer with state (" + ", ".join(state[:6])
            + (", ..." if len(state) > 6 else "")
            + "); SVGD as in the paper is plain SGD on virtual gradients")


def _not_a_kernel(skipped: list[SkippedNode]) -> bool:
    """Every use of θ selects rows (an embedding table) or is elementwise or a bias add (a
    2-D bias, like MultiHeadAttention's), or cuts θ for such uses."""
    return bool(skipped) and all(k.op in GATHER_OPS or k.op in ELEMENTWISE_OPS
                                 or k.op == "BiasAdd" or "not a kernel op" in k.reason
                                 for k in skipped)


def _lost_kernels_warning(analysis: Analysis, rows: list[SiteReport],
                          skipped: list[SkippedNode]) -> str | None:
    """One warning naming the kernels (rank ≥ 2 variables the step trains) left on plain
    gradients, with the first reason of each."""
    transformed = {r.variable for r in rows}
    uses: dict[str, list[SkippedNode]] = {}
    for k in skipped:
        uses.setdefault(k.variable, []).append(k)
    lost: dict[str, str] = {}
    for p, info in sorted(analysis.variables.items(), key=lambda kv: kv[1].logical_name):
        name = info.logical_name or info.name
        kernel = (info.trainable and not info.replica and analysis.writes.get(p)
                  and len(info.shape) >= 2)
        if not kernel or name in transformed or info.name in transformed:
            continue
        why = uses.get(name) or uses.get(info.name) or []
        if not _not_a_kernel(why):
            lost.setdefault(name, why[0].reason if why else "no forward op reads it linearly")
    if not lost:
        return None
    items = list(lost.items())
    return (f"{len(items)} kernel(s) get no virtual gradients: "
            + "; ".join(f"{v} ({r})" for v, r in items[:4])
            + ("; ..." if len(items) > 4 else "") + " (see the skipped list)")


def _reshaped_to_sequence(analysis: Analysis, node: str) -> bool:
    """Whether F's output is reshaped back to more than 2 axes: a Dense on a sequence, which
    Keras and ``tf.tensordot`` flatten to a 2-D MatMul and reshape back."""
    for reader, _ in analysis.ir.consumers_of_op(Tensor(node, 0), "Reshape"):
        info = analysis.shapes.get(Tensor(reader, 0))
        if info is not None and info[1].rank is not None and info[1].rank > 2:
            return True
    return False


def _sequence_sites(analysis: Analysis, sites: list[PlannedSite]) -> set[str]:
    """The forward nodes (outside loops) of the sites whose σ' is a sequence flattened to 2-D."""
    return {a.forward for s in sites for a in s.applications
            if a.loop is None and len(a.dims) == 2 and _reshaped_to_sequence(analysis, a.forward)}


def _scale_warning(options: Options, rows: list[SiteReport],
                   sequences: set[str] = frozenset()) -> str | None:
    """The scale hint: s ≥ 0.1 on convolutions, einsums and Dense layers on sequences (σ' of
    more than 2 axes, or flattened from one: ``sequences`` names those forward nodes)."""
    initial = value_at(options.scale)  # a schedule: its s(0)
    if options.transform != "svgd" or initial < 0.1:
        return None
    wide = sorted({r.variable for r in rows if r.op in CONV_OPS or len(r.output_shape) > 2
                   or {r.node, *(a.node for a in r.applications)} & sequences})
    if not wide:
        return None
    return (f"scale {initial:g} on sites whose σ' has more than 2 axes (convolutions, "
            f"Dense on sequences, einsum: {', '.join(wide[:3])}"
            + (", ..." if len(wide) > 3 else "") + "): the paper used s = 0.01 (ResNet-20) "
            "and s = 0.001 (VGG) for such layers; if the loss grows or goes NaN, lower the "
            "scale")


def require_sites(plan: Plan) -> Plan:
    """The plan, or ``NoSitesError`` (carrying the report) when it has no site."""
    if not plan.sites:
        skipped = plan.report.skipped
        listed = "; ".join(f"{k.node} ({k.op}: {k.reason})" for k in skipped[:8])
        raise NoSitesError(
            "no site to transform was found"
            + (f" among the V_θ→σ nodes: {listed}" if skipped else
               " (no forward op reads a trainable variable)")
            + "; check the step trains a model with linear layers, or widen ops",
            report=plan.report)
    return plan
