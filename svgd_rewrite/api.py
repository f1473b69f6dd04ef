"""The library entry points: one pipeline, load → analyze → plan → rewrite → emit."""
from __future__ import annotations

from typing import Sequence

import tensorflow as tf

from .step import SVGDStep
from .errors import InvalidOptionError, already_rewritten
from .frontend import plan_step, rewrite_with
from .load import LoadedStep, load_step
from .options import Options, takes_options
from .progress import stage
from .report import Report
from .state import AccumulatorState
from .surgery import Rewritten

class FunctionFrontEnd:
    """A ``tf.function`` / ``ConcreteFunction`` in, an ``SVGDStep`` out."""

    def __init__(self, fn, variables: Sequence[tf.Variable] | None = None,
                 state: AccumulatorState | None = None):
        self.fn, self.variables, self.state = fn, variables, state

    def load(self) -> LoadedStep:
        if isinstance(self.fn, SVGDStep):
            raise already_rewritten()
        stage("load")
        return load_step(self.fn, self.variables)

    def finish(self, loaded: LoadedStep, rewritten: Rewritten, report: Report) -> SVGDStep:
        stage("emit")
        return SVGDStep(loaded, rewritten, report, state=self.state)


@takes_options
def rewrite(train_step, *, variables: Sequence[tf.Variable] | None = None,
            state: AccumulatorState | None = None, options: Options) -> SVGDStep:
    """Rewrite a traced training step so that it trains with virtual gradients (SVGD).

    ``train_step`` is a ``tf.function`` (with an input signature, or traced once) or a
    ``ConcreteFunction`` that computes a loss, its gradients and applies an update (any
    optimizer; inner ``tf.function`` calls, ``tf.while_loop``/RNN layers and
    ``tf.distribute`` steps that call ``strategy.run`` included).

    Returns an ``SVGDStep`` (a ``tf.Module``) called with the same arguments and giving the
    same outputs. Its attributes: ``report`` (sites, skipped V_θ→σ nodes with reasons, memory,
    warnings), ``state`` (an ``AccumulatorState``: one r per trained variable θ, by name),
    ``accumulators`` (those r in site order), ``step_variables`` (the step's own variables,
    shared), ``graph_def``/``original_graph_def`` and ``function`` (the tf.function).

    ``variables`` pairs captured handles with variables when the function's graph does not
    record them (a restored SavedModel function). ``state`` shares the accumulators of another
    rewrite over the same variables (``rewrite(other_step, state=first.state)``); by default
    each rewrite has its own.
{options}
    Raises ``SVGDRewriteError`` subclasses, each with a one-line message:
    ``InvalidOptionError`` (a bad option or argument), ``LoadError`` (not a traced step, Python
    arguments), ``NoTrainableVariablesError``, ``NoGradientsError`` (an inference function),
    ``NoSitesError`` (``.report`` says why each V_θ→σ node was skipped),
    ``AlreadyRewrittenError``, ``UnsupportedError`` (e.g. ``ParameterServerStrategy``).
    """
    _check_variables(variables)
    if state is not None and not isinstance(state, AccumulatorState):
        raise InvalidOptionError(f"state must be an AccumulatorState (another step's "
                                 f"``.state``), got {type(state).__name__}")
    return rewrite_with(FunctionFrontEnd(train_step, variables, state), options)


@takes_options
def analyze_step(train_step, *, variables: Sequence[tf.Variable] | None = None,
                 options: Options) -> Report:
    """The report of what ``rewrite`` would do, without rewriting anything (also when no
    site is found: the report then says why).

    ``train_step`` and ``variables`` are ``rewrite``'s, and so are the options. Returns a
    ``Report``; raises what ``rewrite`` raises except ``NoSitesError``.
{options}"""
    _check_variables(variables)
    return plan_step(load_step(train_step, variables), options).report


def _check_variables(variables) -> None:
    """``variables``: None or a list of variables (tf.Variable or Keras variables)."""
    if variables is None:
        return
    if (isinstance(variables, (str, bytes)) or not isinstance(variables, (list, tuple))
            or not all(hasattr(v, "shape") and hasattr(v, "dtype") and hasattr(v, "assign")
                       for v in variables)):
        raise InvalidOptionError(f"variables must be a list of variables, got "
                                 f"{type(variables).__name__}")
