"""svgd-rewrite: rewrite TensorFlow training steps to train with virtual gradients (SVGD).

Names are imported lazily, so that ``import svgd_rewrite`` (and the command line) can
silence TensorFlow's start-up logging before TensorFlow loads.
"""
from __future__ import annotations

import importlib
from typing import Any

from .errors import (AlreadyRewrittenError, InvalidOptionError, LoadError, NoGradientsError,
                     ExportError, NoSitesError, NoTrainableVariablesError, OutputError,
                     StepCallError, SVGDRewriteError, UnsupportedError)

__version__ = "0.1.0"

_LAZY = {
    "rewrite": "api", "analyze_step": "api", "SVGDStep": "step", "Report": "report",
    "SiteReport": "report", "SkippedNode": "report", "MemoryReport": "report",
    "REGISTRY": "registry", "DEFAULT_OPS": "registry", "rewrite_saved_model": "runner",
    "export": "exporters", "AccumulatorState": "state",
}

__all__ = sorted(_LAZY) + [
    "SVGDRewriteError", "InvalidOptionError", "LoadError", "NoTrainableVariablesError",
    "NoGradientsError", "NoSitesError", "AlreadyRewrittenError", "OutputError", "ExportError",
    "UnsupportedError", "StepCallError",
    "__version__",
]


_SUBMODULES = ("keras", "exporters", "options", "registry")


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:  # svgd_rewrite.keras.enable(...) after a plain import svgd_rewrite
        module = importlib.import_module(f".{name}", __name__)
        globals()[name] = module
        return module
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | set(_SUBMODULES))
