"""svgd-rewrite: rewrite TensorFlow training steps to train with virtual gradients (SVGD)."""
from .api import analyze_step, rewrite
from .emit import SVGDStep
from .errors import (AlreadyRewrittenError, InvalidOptionError, LoadError, NoGradientsError,
                     NoSitesError, NoTrainableVariablesError, SVGDRewriteError)
from .registry import DEFAULT_OPS, REGISTRY
from .report import MemoryReport, Report, SiteReport, SkippedNode

__version__ = "0.1.0"

__all__ = [
    "rewrite", "analyze_step", "SVGDStep", "Report", "SiteReport", "SkippedNode", "MemoryReport",
    "REGISTRY", "DEFAULT_OPS", "SVGDRewriteError", "InvalidOptionError", "LoadError",
    "NoTrainableVariablesError", "NoGradientsError", "NoSitesError", "AlreadyRewrittenError",
    "__version__",
]
