"""Rewrite options (Algorithm 1's s, ρ, ε plus what to transform), validated once.

``Options`` holds the defaults, in this one place: the library's entry points, the Keras
integration and the command line read them from here (and a test checks the README's).
No TensorFlow import (the command line reads the defaults at start-up)."""
from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass
from typing import Iterable

import numpy as np

from .errors import InvalidOptionError, checked_arguments
from .registry import DEFAULT_OPS, REGISTRY

GRANULARITIES = ("full", "channel", "auto")
_TINY = float(np.finfo(np.float32).tiny)
TRANSFORMS = ("svgd", "identity")
POOLINGS = ("variable", "application")


@dataclass(frozen=True)
class Options:
    """Validated options. ``ops`` is the sorted tuple of forward op types to transform.

    ``pooling``: ``variable`` — one r per trained variable θ, fed by every application of θ
    in the step; ``application`` — one r per application (the first version's behaviour).
    ``post_scale``: scale P's output instead of g where that is exact. ``portable``: the
    reduction XLA and TFLite compile (``Square`` + ``Sum``) instead of the default runtime's
    one-pass ``EuclideanNorm``; ``None`` decides from the step (``jit_compile=True``: portable).
    """

    scale: float = 0.1
    rho: float = 0.9
    epsilon: float = 1e-6
    ops: tuple[str, ...] = DEFAULT_OPS
    granularity: str = "full"
    transform: str = "svgd"
    pooling: str = "variable"
    post_scale: bool = True
    portable: bool | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ops"] = list(self.ops)
        return d


@checked_arguments
def make_options(scale: float = Options.scale, rho: float = Options.rho,
                 epsilon: float = Options.epsilon, ops: Iterable[str] | None = None,
                 granularity: str = Options.granularity,
                 transform: str = Options.transform, pooling: str = Options.pooling,
                 post_scale: bool = Options.post_scale,
                 portable: bool | None = Options.portable) -> Options:
    """Validate user options (``ops=None``: ``DEFAULT_OPS``); raise ``InvalidOptionError``
    with what to change."""
    def number(name: str, value) -> float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise InvalidOptionError(f"{name} must be a number, got {value!r}")
        f = float(value)
        with np.errstate(over="ignore"):
            f32 = float(np.float32(f)) if math.isfinite(f) else f
        if not math.isfinite(f32):
            raise InvalidOptionError(f"{name} must be finite in float32 (|{name}| < 3.4e38), "
                                     f"got {value!r}")
        return f

    scale, rho, epsilon = number("scale", scale), number("rho", rho), number("epsilon", epsilon)
    if scale == 0:
        raise InvalidOptionError("scale must be > 0 (0 would stop training): to run the "
                                 "surgery without scaling use transform='identity'")
    if scale < 0:
        raise InvalidOptionError(f"scale must be > 0, got {scale}")
    if scale < _TINY:
        raise InvalidOptionError(f"scale must be at least {_TINY:.3g} (the smallest normal "
                                 f"float32; smaller values round to 0), got {scale:g}")
    if not 0 <= rho < 1 or float(np.float32(rho)) >= 1:
        raise InvalidOptionError(f"rho must be in [0, 1) in float32, got {rho}")
    if epsilon <= 0:
        raise InvalidOptionError(f"epsilon must be > 0, got {epsilon}")
    if epsilon < _TINY:
        raise InvalidOptionError(f"epsilon must be at least {_TINY:.3g} (the smallest normal "
                                 f"float32), got {epsilon:g}")
    if ops is None:
        op_tuple = DEFAULT_OPS
    else:
        if isinstance(ops, str):
            ops = [o for o in ops.split(",") if o.strip()]
        op_tuple = tuple(sorted({str(o).strip() for o in ops}))
        unknown = [o for o in op_tuple if o not in REGISTRY]
        if unknown:
            raise InvalidOptionError(
                f"unknown op type(s) {', '.join(unknown)} in ops: choose from "
                f"{', '.join(sorted(REGISTRY))}")
        if not op_tuple:
            raise InvalidOptionError("ops is empty: name at least one op type, or pass None")
    if granularity not in GRANULARITIES:
        raise InvalidOptionError(f"granularity must be one of {', '.join(GRANULARITIES)}, "
                                 f"got {granularity!r}")
    if transform not in TRANSFORMS:
        raise InvalidOptionError(f"transform must be one of {', '.join(TRANSFORMS)}, "
                                 f"got {transform!r}")
    if pooling not in POOLINGS:
        raise InvalidOptionError(f"pooling must be one of {', '.join(POOLINGS)}, "
                                 f"got {pooling!r}")
    for name, value in (("post_scale", post_scale), ("portable", portable)):
        if not isinstance(value, bool) and not (name == "portable" and value is None):
            raise InvalidOptionError(f"{name} must be True or False, got {value!r}")
    return Options(scale=scale, rho=rho, epsilon=epsilon, ops=op_tuple,
                   granularity=granularity, transform=transform, pooling=pooling,
                   post_scale=post_scale, portable=portable)


EXPORT_FORMATS = ("tensorboard", "graphml", "graphs-tuple", "dot", "svg", "html")


def parse_formats(formats: Iterable[str] | str) -> tuple[str, ...]:
    """Validate export formats (``all`` means every one); ``ExportError`` naming the valid
    ones. No TensorFlow import: the command line checks ``--export`` before loading it."""
    from .errors import ExportError

    if isinstance(formats, str):
        formats = [f for f in formats.split(",")]
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
