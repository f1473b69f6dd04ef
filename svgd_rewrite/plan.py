"""Plan stage: apply the options to the analysis; fix each site's accumulator shape and axes."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf

from .analyze import Analysis, Consumer, Match
from .ir import Tensor
from .load import Distribution
from .distribute import group_replicas
from .errors import NoSitesError
from .options import Options
from .registry import CONV_OPS, REGISTRY
from .report import MemoryReport, Report, SiteReport, SkippedNode


@dataclass(frozen=True)
class PlannedSite:
    """One site to rewrite: where g is, where ĝ goes, and the accumulator's geometry."""

    index: int
    forward: str
    variable: str
    match: Match
    g_dtype: tf.DType
    reduce_axes: tuple[int, ...]
    accumulator_shape: tuple[int, ...]
    broadcast_shape: tuple[int, ...] | None  # reshape r before scaling g (None: broadcasts as is)
    loss_scale: str | None = None  # divide g by this before squaring (mixed precision)
    replica: int | None = None  # tf.distribute: this copy's replica
    peers: tuple[int, ...] = ()  # tf.distribute: the indices of every replica's copy


@dataclass
class Plan:
    sites: list[PlannedSite]
    report: Report
    tensor_types: dict = field(default_factory=dict)  # Tensor -> (dtype, static shape)
    distribution: Distribution | None = None  # tf.distribute: the step's replicas


def _shape_list(shape: tf.TensorShape) -> list[int | None] | None:
    return None if shape.rank is None else shape.as_list()


@dataclass(frozen=True)
class Geometry:
    """A site's accumulator: the axes of σ' that mean(g²) reduces, r's shape, the shape r is
    reshaped to before scaling g (None: it broadcasts as it is), the granularity used (full
    falls back to channel when σ' has unknown non-batch axes, with a note), σ''s static dims."""

    reduce_axes: tuple[int, ...]
    accumulator_shape: tuple[int, ...]
    broadcast_shape: tuple[int, ...] | None
    granularity: str
    note: str
    dims: list[int | None]


def _geometry(c: Consumer, analysis: Analysis, granularity: str) -> Geometry | str:
    """The site's ``Geometry``, or the reason it has none (σ''s rank or channels unknown)."""
    spec = REGISTRY[c.op]
    _, out_shape = analysis.shapes[Tensor(c.node, 0)]
    dims = _shape_list(out_shape)
    if dims is None:
        return f"the rank of {c.op}'s output is unknown at trace time"
    rank = len(dims)
    node = analysis.ir.node(c.node)
    batch = spec.batch_axis(node, c.slot, rank)
    channel = spec.channel_axis(node, c.slot, rank)
    note = ""
    if granularity == "full":
        kept = [a for a in range(rank) if a != batch]
        if any(dims[a] is None for a in kept):
            kept, granularity = [channel], "channel"
            note = "full→channel: a non-batch axis of σ' is unknown at trace time"
    else:
        kept = [channel]
    if any(dims[a] is None for a in kept):
        return f"the channel axis of {c.op}'s output has unknown size"
    reduce_axes = tuple(a for a in range(rank) if a not in kept)
    acc_shape = tuple(dims[a] for a in kept)
    trailing = kept == list(range(rank - len(kept), rank))
    bshape = None if trailing else tuple(dims[a] if a in kept else 1 for a in range(rank))
    return Geometry(reduce_axes, acc_shape, bshape, granularity, note, dims)


def make_plan(analysis: Analysis, options: Options) -> Plan:
    """Choose the sites (``options.ops``), their accumulators, and build the report."""
    sites, site_reports, skipped, notes = _choose_sites(analysis, options)
    if analysis.distribution is not None:
        sites, site_reports, skipped = group_replicas(
            sites, site_reports, skipped, analysis.variables, len(analysis.distribution.devices))
    report = Report(sites=site_reports, skipped=skipped, memory=_memory(analysis, sites),
                    options=options.to_dict(),
                    warnings=notes + _warnings(analysis, options, sites, site_reports, skipped))
    return Plan(sites=sites, report=report, tensor_types=analysis.shapes,
                distribution=analysis.distribution)


def _choose_sites(analysis: Analysis, options: Options):
    """The planned sites and their report rows, the skipped V_θ→σ nodes with their reasons,
    and the per-site notes (a granularity fallback)."""
    sites: list[PlannedSite] = []
    site_reports: list[SiteReport] = []
    skipped: list[SkippedNode] = []
    notes: list[str] = []
    var_name = {p: v.name for p, v in analysis.variables.items()}
    for c in analysis.forward:
        vname = var_name[c.variable]
        if c.match is None:
            skipped.append(SkippedNode(c.node, c.op, vname, c.reason or "not transformable"))
            continue
        if c.op not in options.ops:
            hint = "opt-in" if not REGISTRY[c.op].default else "excluded"
            skipped.append(SkippedNode(c.node, c.op, vname,
                                       f"op {c.op} is not in ops ({hint}: add it to ops)"))
            continue
        geo = _geometry(c, analysis, options.granularity)
        if isinstance(geo, str):
            skipped.append(SkippedNode(c.node, c.op, vname, geo))
            continue
        g = Tensor(*c.match.g)
        g_dtype = analysis.shapes[g][0]
        index = len(sites)
        scale = analysis.loss_scale if g_dtype == tf.float16 else None
        sites.append(PlannedSite(index=index, forward=c.node, variable=c.variable, match=c.match,
                                 g_dtype=g_dtype, reduce_axes=geo.reduce_axes,
                                 accumulator_shape=geo.accumulator_shape,
                                 broadcast_shape=geo.broadcast_shape,
                                 loss_scale=str(Tensor(*scale)) if scale else None))
        site_reports.append(SiteReport(
            index=index, node=c.node, op=c.op, variable=vname, param_input=c.slot,
            gradient_op=c.match.grad_op, gradient_op_type=analysis.ir.op(c.match.grad_op),
            gradient_input=c.match.g_slot, upstream_gradient=str(g), output_shape=geo.dims,
            accumulator_shape=list(geo.accumulator_shape), granularity=geo.granularity,
            note=geo.note, variable_node=c.variable))
        if geo.note:
            notes.append(f"site {c.node}: {geo.note}")
    return sites, site_reports, skipped, notes


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
              site_reports: list[SiteReport], skipped: list[SkippedNode]) -> list[str]:
    """What the user should know about the plan: mixed precision, optimizer state, registry
    ops left out, the scale for convolutions."""
    warnings: list[str] = []
    if any(s.loss_scale for s in sites):
        warnings.append(f"mixed precision: accumulators square g / {analysis.loss_scale_variable}"
                        " (the loss scale) and keep their value on steps with non-finite g; a "
                        "dynamic loss scale skips the first steps while it halves to fit the "
                        "normalized virtual gradients (about s·scale per element)")
    elif any(s.g_dtype == tf.float16 for s in sites):
        warnings.append("float16 gradients but no loss-scale variable was found: accumulators "
                        "square g as it is")
    if analysis.stateful_optimizer_vars:
        warnings.append(
            "the virtual gradients feed an optimizer with state ("
            + ", ".join(analysis.stateful_optimizer_vars[:6])
            + (", ..." if len(analysis.stateful_optimizer_vars) > 6 else "")
            + "); SVGD as in the paper is plain SGD on virtual gradients")
    lost = [k for k in skipped if k.op in options.ops and "is not in ops" not in k.reason]
    if lost:
        warnings.append(f"{len(lost)} node(s) of registry ops were not transformed ("
                        + ", ".join(f"{k.node} on {k.variable}" for k in lost[:4])
                        + (", ..." if len(lost) > 4 else "") + "): see the skipped list")
    if (options.transform == "svgd" and options.scale >= 0.1
            and any(s.op in CONV_OPS for s in site_reports)):
        warnings.append(f"convolution sites with scale {options.scale:g}: the paper used "
                        "s = 0.01 (ResNet-20) and s = 0.001 (VGG) for convolutional nets; if "
                        "the loss goes NaN, lower the scale")
    return warnings


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
