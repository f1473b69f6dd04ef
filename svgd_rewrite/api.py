"""The library entry points: one pipeline, load → analyze → plan → rewrite → emit."""
from __future__ import annotations

from typing import Iterable, Sequence

import tensorflow as tf

from .emit import SVGDStep
from .errors import InvalidOptionError, already_rewritten, checked_arguments
from .frontend import plan_step, rewrite_with
from .load import LoadedStep, load_step
from .options import Options, make_options
from .progress import stage
from .report import Report
from .state import AccumulatorState
from .surgery import Rewritten

class FunctionFrontEnd:
    """A ``tf.function`` / ``ConcreteFunction`` in, an ``SVGDStep`` out."""

    accumulator_kind = "placeholder"

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


_OPTION_DOCS = """
    Options (Algorithm 1 of the paper; every default is ``svgd_rewrite.options.Options``'s):

    - ``scale`` (float, default 0.1): s, the virtual gradients' scale. The paper used 0.1 for
      its MLP, 0.01 for ResNet-20 and 0.001 for VGG; layers whose output σ' has more than two
      axes (convolutions, Dense on sequences) usually need 0.01–0.001. A normal float32 > 0.
    - ``rho`` (float, default 0.9): ρ, the decay of the accumulated mean(g²), in [0, 1).
    - ``epsilon`` (float, default 1e-6): ε under the square root; at least 1.2e-38.
    - ``ops`` (iterable of op types, default None = ``svgd_rewrite.DEFAULT_OPS``): the forward
      ops to transform (``svgd_rewrite.REGISTRY`` lists every one; ``BiasAdd`` is opt-in).
    - ``granularity`` (``"full"``, ``"channel"`` or ``"auto"``; default ``"full"``): r's shape —
      σ' without its batch axis (the paper's), one entry per output channel (less memory), or
      channel for convolutions whose full r would exceed their parameter count.
    - ``transform`` (``"svgd"`` or ``"identity"``; default ``"svgd"``): ``"identity"`` runs the
      same surgery with ĝ = g — the rewritten step then trains exactly like the original (a
      check of the rewrite).
    - ``pooling`` (``"variable"`` or ``"application"``; default ``"variable"``): one r per
      trained variable θ, fed by every use of θ in the step (replicas, shared layers,
      micro-batches, recurrent timesteps), or one r per use.
    - ``post_scale`` (bool, default True): scale P's parameter-sized output instead of g where
      that is exact (f constant over what P sums).
    - ``portable`` (bool or None, default None): reduce g² with ops that XLA compiles and
      TFLite has as builtins (``Square`` + ``Sum``) instead of the one-pass ``EuclideanNorm``;
      None = portable for steps declared with ``jit_compile=True``. Set it when you wrap the
      rewritten step in your own XLA function or convert it to TFLite.
"""


@checked_arguments
def rewrite(train_step, *, scale: float = Options.scale, rho: float = Options.rho,
            epsilon: float = Options.epsilon, ops: Iterable[str] | None = None,
            granularity: str = Options.granularity, transform: str = Options.transform,
            pooling: str = Options.pooling, post_scale: bool = Options.post_scale,
            portable: bool | None = Options.portable,
            variables: Sequence[tf.Variable] | None = None,
            state: AccumulatorState | None = None) -> SVGDStep:
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
    options = make_options(scale=scale, rho=rho, epsilon=epsilon, ops=ops,
                           granularity=granularity, transform=transform, pooling=pooling,
                           post_scale=post_scale, portable=portable)
    if state is not None and not isinstance(state, AccumulatorState):
        raise InvalidOptionError(f"state must be an AccumulatorState (another step's "
                                 f"``.state``), got {type(state).__name__}")
    return rewrite_with(FunctionFrontEnd(train_step, variables, state), options)


rewrite.__doc__ = rewrite.__doc__.replace("{options}", _OPTION_DOCS)
rewrite.__wrapped__.__doc__ = rewrite.__doc__


@checked_arguments
def analyze_step(train_step, *, ops: Iterable[str] | None = None,
                 granularity: str = Options.granularity,
                 variables: Sequence[tf.Variable] | None = None, **options) -> Report:
    """The report of what ``rewrite`` would do, without rewriting anything (also when no
    site is found: the report then says why).

    ``train_step``, ``ops``, ``granularity`` and ``variables`` are ``rewrite``'s; ``**options``
    takes its other options (``scale``, ``rho``, ``epsilon``, ``transform``, ``pooling``,
    ``post_scale``, ``portable``). Returns a ``Report``; raises what ``rewrite`` raises except
    ``NoSitesError``.
    """
    options = make_options(ops=ops, granularity=granularity, **options)
    return plan_step(load_step(train_step, variables), options).report
