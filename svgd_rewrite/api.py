"""The library entry points: one pipeline, load → analyze → plan → rewrite → emit."""
from __future__ import annotations

from typing import Iterable, Sequence

import tensorflow as tf

from .emit import SVGDStep
from .errors import already_rewritten
from .frontend import plan_step, rewrite_with
from .load import LoadedStep, load_step
from .options import Options, make_options
from .progress import stage
from .report import Report
from .surgery import Rewritten

class FunctionFrontEnd:
    """A ``tf.function`` / ``ConcreteFunction`` in, an ``SVGDStep`` out."""

    accumulator_kind = "placeholder"

    def __init__(self, fn, variables: Sequence[tf.Variable] | None = None):
        self.fn, self.variables = fn, variables

    def load(self) -> LoadedStep:
        if isinstance(self.fn, SVGDStep):
            raise already_rewritten()
        stage("load")
        return load_step(self.fn, self.variables)

    def finish(self, loaded: LoadedStep, rewritten: Rewritten, report: Report) -> SVGDStep:
        stage("emit")
        return SVGDStep(loaded, rewritten, report)


def rewrite(train_step, *, scale: float = Options.scale, rho: float = Options.rho,
            epsilon: float = Options.epsilon, ops: Iterable[str] | None = None,
            granularity: str = Options.granularity, transform: str = Options.transform,
            variables: Sequence[tf.Variable] | None = None) -> SVGDStep:
    """Rewrite a traced training step so that it trains with virtual gradients (SVGD).

    ``train_step`` is a ``tf.function`` (with an input signature, or traced once) or a
    ``ConcreteFunction`` that computes a loss, its gradients and applies an update. Returns an
    ``SVGDStep`` (a ``tf.Module``) called with the same arguments and giving the same outputs.
    ``variables`` pairs captured handles with variables when the function's graph does not
    record them (a restored SavedModel function).
    """
    options = make_options(scale=scale, rho=rho, epsilon=epsilon, ops=ops,
                           granularity=granularity, transform=transform)
    return rewrite_with(FunctionFrontEnd(train_step, variables), options)


def analyze_step(train_step, *, ops: Iterable[str] | None = None,
                 granularity: str = Options.granularity,
                 variables: Sequence[tf.Variable] | None = None, **kwargs) -> Report:
    """The report of what ``rewrite`` would do, without rewriting anything (also when no
    site is found: the report then says why)."""
    options = make_options(ops=ops, granularity=granularity, **kwargs)
    return plan_step(load_step(train_step, variables), options).report
