"""Front ends: how each kind of input enters the common pipeline and how its output leaves.

A front end ``load``s its input into a ``LoadedStep`` (a flat GraphDef, the variables behind
its placeholders or variable nodes, and — for a traced function — its calling convention) and
``finish``es its own output from the rewritten GraphDef (the surgery's accumulators are
resource handles fed on import; a TF1 graph's front end materializes them as variable nodes
of its kind). Between them the pipeline is shared: analyze → plan → surgery
(``rewrite_with``).

The front ends: ``api.FunctionFrontEnd`` (a ``tf.function`` / ``ConcreteFunction``),
``savedmodel.SavedModelFrontEnd`` (a SavedModel's train function), ``graphdef.GraphDefFrontEnd``
(a TF1 GraphDef or MetaGraph) and ``keras``'s traced ``train_step``. Every result they return
satisfies ``RewriteResult``, which is all the exporters and the command line read.
"""
from __future__ import annotations

import logging
from typing import Protocol

import tensorflow as tf
from tensorflow.core.framework import graph_pb2

from .analyze import analyze
from .edits import EditLog
from .load import LoadedStep, VariableInfo
from .options import Options
from .plan import Plan, make_plan, require_sites
from .progress import stage
from .report import Report
from .surgery import Rewritten, apply_surgery

log = logging.getLogger(__name__)


class RewriteResult(Protocol):
    """What every front end's result offers: the report, both graphs, the edit log (what the
    rewrite changed: ``edits.EditLog``) and the variables of the rewritten graph (its
    placeholders or variable nodes, accumulators included)."""

    report: Report
    graph_def: graph_pb2.GraphDef
    original_graph_def: graph_pb2.GraphDef
    edits: EditLog

    @property
    def graph_variables(self) -> dict[str, VariableInfo]: ...


class FrontEnd(Protocol):
    """One kind of input: loads it, and finishes its output after the surgery."""

    def load(self) -> LoadedStep: ...

    def finish(self, loaded: LoadedStep, rewritten: Rewritten,
               report: Report) -> RewriteResult: ...


def accumulator_variables(loaded: LoadedStep, rewritten: Rewritten) -> dict[str, VariableInfo]:
    """The variables of a rewritten traced function's graph: the step's own plus one
    placeholder per accumulator (fed a float32 handle)."""
    out = dict(loaded.variables)
    for a in rewritten.accumulators:
        out[a.placeholder] = VariableInfo(placeholder=a.placeholder, name=a.placeholder,
                                          shape=tuple(a.shape), dtype=tf.float32,
                                          trainable=False)
    return out


def plan_step(loaded: LoadedStep, options: Options) -> Plan:
    """Analyze a loaded step and plan its rewrite (no graph is changed)."""
    stage("analyze")
    analysis = analyze(loaded)
    stage("plan")
    plan = make_plan(analysis, options)
    log.info("planned %d site(s), %d node(s) kept as identity", len(plan.sites),
             len(plan.report.skipped))
    return plan


def rewrite_loaded(loaded: LoadedStep, options: Options) -> tuple[Rewritten, Report]:
    """The surgery on a loaded step: the rewritten GraphDef and the report."""
    plan = require_sites(plan_step(loaded, options))
    stage("surgery")
    portable = options.portable if options.portable is not None else loaded.xla
    return apply_surgery(loaded.graph_def, plan, options, one_pass=not portable), plan.report


def rewrite_with(front: FrontEnd, options: Options) -> RewriteResult:
    """Load, analyze, plan, rewrite and finish: the one pipeline every front end runs."""
    loaded = front.load()
    rewritten, report = rewrite_loaded(loaded, options)
    return front.finish(loaded, rewritten, report)
