"""Rewrite options (Algorithm 1's s, ρ, ε plus what to transform), declared once.

Each field of ``Options`` carries its default, its documentation and its check; the library's
entry points get their keyword parameters from it (``takes_options``), the command line
reads the defaults from it (and a test checks the README's). Adding an option is a field,
its check and its doc.
No TensorFlow import (the command line reads the defaults at start-up)."""
from __future__ import annotations

import functools
import inspect
import math
import numbers
import textwrap
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Iterable

import numpy as np

from .errors import ExportError, InvalidOptionError, first_line
from .registry import DEFAULT_OPS, REGISTRY

GRANULARITIES = ("full", "channel", "auto")
_TINY = float(np.finfo(np.float32).tiny)
TRANSFORMS = ("svgd", "identity")
POOLINGS = ("variable", "application")


# --- the checks, one per option: the user's value -> the stored value --------------------

def _number(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidOptionError(f"{name} must be a number, got {value!r}")
    f = float(value)
    with np.errstate(over="ignore"):
        f32 = float(np.float32(f)) if math.isfinite(f) else f
    if not math.isfinite(f32):
        raise InvalidOptionError(f"{name} must be finite in float32 (|{name}| < 3.4e38), "
                                 f"got {value!r}")
    return f


def is_schedule(value) -> bool:
    """A schedule of the step: a Keras ``LearningRateSchedule`` or any callable."""
    return callable(value) and not isinstance(value, (numbers.Real, str))


def value_at(value, step: int = 0) -> float:
    """A number option's value, or a schedule's at ``step`` (eagerly, also inside a trace)."""
    if not is_schedule(value):
        return float(value)
    import tensorflow as tf  # only for a schedule, which only a TensorFlow program passes

    with tf.init_scope():
        return float(np.asarray(value(step)))


def describe(value) -> str | float:
    """A number as it is; a schedule as its class and configuration (for reports, JSON)."""
    if not is_schedule(value):
        return value
    config = getattr(value, "get_config", None)
    if callable(config):
        try:
            items = ", ".join(f"{k}={v!r}" for k, v in sorted(config().items())
                              if k != "name" and not isinstance(v, dict))
            return f"{type(value).__name__}({items})"
        except Exception:  # noqa: BLE001 - a schedule without a usable config
            pass
    return f"{getattr(value, '__name__', type(value).__name__)} (a schedule of the step)"


def _schedule(name: str, value, check: Callable[[Any], float]):
    """A schedule, checked at steps 0 and 1 (each value as ``check`` checks a number)."""
    for step in (0, 1):
        try:
            number = value_at(value, step)
        except Exception as e:  # noqa: BLE001 - whatever the user's callable raises
            raise InvalidOptionError(f"{name} is a schedule that fails at step {step} "
                                     f"({first_line(e, 120)}): pass a number, a Keras "
                                     "LearningRateSchedule or a callable of the step") from None
        try:
            check(number)
        except InvalidOptionError as e:
            raise InvalidOptionError(f"{name}'s schedule at step {step}: {e}") from None
    return value


def _check_scale(value) -> float:
    if is_schedule(value):
        return _schedule("scale", value, _check_scale)
    scale = _number("scale", value)
    if scale == 0:
        raise InvalidOptionError("scale must be > 0 (0 would stop training): to run the "
                                 "surgery without scaling use transform='identity'")
    if scale < 0:
        raise InvalidOptionError(f"scale must be > 0, got {scale}")
    if scale < _TINY:
        raise InvalidOptionError(f"scale must be at least {_TINY:.3g} (the smallest normal "
                                 f"float32; smaller values round to 0), got {scale:g}")
    return scale


def _check_rho(value) -> float:
    if is_schedule(value):
        return _schedule("rho", value, _check_rho)
    rho = _number("rho", value)
    if not 0 <= rho < 1 or float(np.float32(rho)) >= 1:
        raise InvalidOptionError(f"rho must be in [0, 1) in float32, got {rho}")
    return rho


def _check_epsilon(value) -> float:
    epsilon = _number("epsilon", value)
    if epsilon <= 0:
        raise InvalidOptionError(f"epsilon must be > 0, got {epsilon}")
    if epsilon < _TINY:
        raise InvalidOptionError(f"epsilon must be at least {_TINY:.3g} (the smallest normal "
                                 f"float32), got {epsilon:g}")
    return epsilon


def _check_ops(ops) -> tuple[str, ...]:
    if ops is None:
        return DEFAULT_OPS
    if isinstance(ops, str):
        ops = [o for o in ops.split(",") if o.strip()]
    elif not isinstance(ops, Iterable):
        raise InvalidOptionError(f"ops must be op type names (a list, or a comma-separated "
                                 f"string), got {ops!r}")
    op_tuple = tuple(sorted({str(o).strip() for o in ops}))
    unknown = [o for o in op_tuple if o not in REGISTRY]
    if unknown:
        raise InvalidOptionError(f"unknown op type(s) {', '.join(unknown)} in ops: choose from "
                                 f"{', '.join(sorted(REGISTRY))}")
    if not op_tuple:
        raise InvalidOptionError("ops is empty: name at least one op type, or pass None")
    return op_tuple


def _choice(name: str, allowed: tuple[str, ...]) -> Callable[[Any], str]:
    def check(value) -> str:
        if not isinstance(value, str) or value not in allowed:
            raise InvalidOptionError(f"{name} must be one of {', '.join(allowed)}, "
                                     f"got {value!r}")
        return value
    return check


def _flag(name: str, optional: bool = False) -> Callable[[Any], bool | None]:
    def check(value):
        if not isinstance(value, bool) and not (optional and value is None):
            raise InvalidOptionError(f"{name} must be True or False, got {value!r}")
        return value
    return check


def _option(default, public_default, doc: str, check: Callable):
    """A field of ``Options``: its stored default, the default a caller passes (``ops``:
    None), its documentation and its check — everything an entry point needs."""
    return field(default=default, metadata={"public": public_default, "doc": doc,
                                            "check": check})


@dataclass(frozen=True)
class Options:
    """The rewrite's options, declared once: each field's default, documentation and check
    give every public entry point (``rewrite``, ``analyze_step``, ``keras.enable``,
    ``VirtualGradients``, ``make_options``) its keyword parameters (``takes_options``).
    ``ops`` is stored as the sorted tuple of forward op types to transform."""

    scale: Any = _option(
        0.1, 0.1, "(float or schedule, default 0.1): s, the virtual gradients' scale. The "
        "paper used 0.1 for its MLP, 0.01 for ResNet-20 and 0.001 for VGG; layers whose output "
        "σ' has more than two axes (convolutions, Dense on sequences) usually need "
        "0.01–0.001. A normal float32 > 0, or a schedule of the 0-based step k (a Keras "
        "``LearningRateSchedule``, or a callable of a float32 tensor written with TensorFlow "
        "ops): step k uses s(k), with no retrace.", _check_scale)
    rho: Any = _option(0.9, 0.9, "(float or schedule, default 0.9): ρ, the decay of the "
                       "accumulated mean(g²), in [0, 1).", _check_rho)
    epsilon: float = _option(1e-6, 1e-6, "(float, default 1e-6): ε under the square root; at "
                             "least 1.2e-38.", _check_epsilon)
    ops: tuple[str, ...] = _option(
        DEFAULT_OPS, None, "(iterable of op types, default None = ``svgd_rewrite.DEFAULT_OPS``):"
        " the forward ops to transform (``svgd_rewrite.REGISTRY`` lists every one; "
        "``BiasAdd`` is opt-in).", _check_ops)
    granularity: str = _option(
        "full", "full", "(``\"full\"``, ``\"channel\"`` or ``\"auto\"``; default "
        "``\"full\"``): r's shape — σ' without its batch axis (the paper's), one entry per "
        "output channel (less memory), or channel for convolutions whose full r would exceed "
        "their parameter count.", _choice("granularity", GRANULARITIES))
    transform: str = _option(
        "svgd", "svgd", "(``\"svgd\"`` or ``\"identity\"``; default ``\"svgd\"``): "
        "``\"identity\"`` runs the same surgery with ĝ = g — the rewritten step then trains "
        "exactly like the original (a check of the rewrite).", _choice("transform", TRANSFORMS))
    pooling: str = _option(
        "variable", "variable", "(``\"variable\"`` or ``\"application\"``; default "
        "``\"variable\"``): one r per trained variable θ, fed by every use of θ in the step "
        "(replicas, shared layers, micro-batches, recurrent timesteps), or one r per use.",
        _choice("pooling", POOLINGS))
    post_scale: bool = _option(
        True, True, "(bool, default True): scale P's parameter-sized output instead of g "
        "where that is exact (f constant over what P sums).", _flag("post_scale"))
    portable: bool | None = _option(
        None, None, "(bool or None, default None): use the reduction XLA compiles and TFLite "
        "has as builtins (``Square`` + ``Sum``) instead of the one-pass ``EuclideanNorm``; "
        "None = portable for steps declared with ``jit_compile=True``. Set it when you wrap "
        "the rewritten step in your own XLA function or convert it to TFLite.",
        _flag("portable", optional=True))

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["ops"] = list(self.ops)
        d["scale"], d["rho"] = describe(self.scale), describe(self.rho)
        return d

    @property
    def scheduled(self) -> bool:
        """Whether s or ρ follows a schedule of the step."""
        return is_schedule(self.scale) or is_schedule(self.rho)


OPTION_NAMES: tuple[str, ...] = tuple(f.name for f in fields(Options))


def option_parameters() -> list[inspect.Parameter]:
    """The options as keyword-only parameters (name, public default, annotation)."""
    hints = {"ops": "Iterable[str] | None"}
    return [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY,
                              default=f.metadata["public"], annotation=hints.get(f.name, f.type))
            for f in fields(Options)]


def option_docs(indent: str = "    ") -> str:
    """The options' documentation, one item each (what ``{options}`` in a docstring becomes)."""
    lines = [f"{indent}Options (Algorithm 1 of the paper; every default is "
             "``svgd_rewrite.options.Options``'s):", ""]
    for f in fields(Options):
        lines += textwrap.wrap(f"- ``{f.name}`` {f.metadata['doc']}", width=92,
                               initial_indent=indent, subsequent_indent=indent + "  ")
    return "\n" + "\n".join(lines) + "\n"


def make_options(**values) -> Options:
    """Validate user options (see ``option_docs``; ``ops=None``: ``DEFAULT_OPS``); raise
    ``InvalidOptionError`` with what to change."""
    unknown = sorted(set(values) - set(OPTION_NAMES))
    if unknown:
        raise InvalidOptionError(f"unknown option(s) {', '.join(unknown)}: the options are "
                                 f"{', '.join(OPTION_NAMES)}")
    checked = {f.name: f.metadata["check"](values.get(f.name, f.metadata["public"]))
               for f in fields(Options)}
    return Options(**checked)


make_options.__signature__ = inspect.Signature(option_parameters(),  # type: ignore[attr-defined]
                                               return_annotation=Options)


def takes_options(fn):
    """``fn(..., options: Options)`` exposed with every option as a keyword parameter: the
    signature (``inspect.signature``, ``help()``) lists them with their defaults, ``{options}``
    in the docstring becomes their documentation, a call validates them into one ``Options``
    passed as ``options``, and bad arguments raise ``InvalidOptionError`` with one line."""
    signature = inspect.signature(fn)
    params = [p for p in signature.parameters.values() if p.name != "options"]
    leading = [p for p in params if p.kind in (inspect.Parameter.POSITIONAL_ONLY,
                                               inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                               inspect.Parameter.VAR_POSITIONAL)]
    trailing = [p for p in params if p not in leading]
    public = signature.replace(parameters=leading + option_parameters() + trailing)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            bound = public.bind(*args, **kwargs)
        except TypeError as e:
            names = ", ".join(public.parameters)
            raise InvalidOptionError(f"{fn.__name__}(): {first_line(e)}; its parameters: "
                                     f"{names}") from None
        chosen = {k: bound.arguments.pop(k) for k in OPTION_NAMES if k in bound.arguments}
        return fn(*bound.args, **bound.kwargs, options=make_options(**chosen))

    wrapper.__signature__ = public  # type: ignore[attr-defined]
    wrapper.__doc__ = (fn.__doc__ or "").replace("{options}", option_docs())
    return wrapper


EXPORT_FORMATS = ("tensorboard", "graphml", "graphs-tuple", "dot", "svg", "html")


def parse_formats(formats: Iterable[str] | str) -> tuple[str, ...]:
    """Validate export formats (``all`` means every one); ``ExportError`` naming the valid
    ones. No TensorFlow import: the command line checks ``--export`` before loading it."""
    if isinstance(formats, str):
        formats = [f for f in formats.split(",")]
    elif not isinstance(formats, Iterable) or not all(isinstance(f, str) for f in formats):
        raise ExportError(f"formats must be format names (a list, or a comma-separated string: "
                          f"{', '.join(EXPORT_FORMATS)} or all), got {formats!r}")
    wanted: list[str] = []
    for f in (x.strip() for x in formats):
        if f == "all":
            wanted += EXPORT_FORMATS
        elif f in EXPORT_FORMATS:
            wanted.append(f)
        else:
            raise ExportError(f"unknown export format {f!r}: choose from "
                              f"{', '.join(EXPORT_FORMATS)} or all")
    if not wanted:
        raise ExportError(f"no export format given: choose from {', '.join(EXPORT_FORMATS)} "
                          "or all")
    return tuple(f for f in EXPORT_FORMATS if f in wanted)
