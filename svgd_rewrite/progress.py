"""Progress by stage, as log records (the library never prints).

Each stage of a rewrite (load, analyze, plan, surgery, emit, write, export) logs one record on
the ``svgd_rewrite.progress`` logger when it starts, with ``stage`` and ``elapsed`` (seconds
since the first stage of the run) as record attributes. The command line shows them on a
terminal once a run takes longer than about two seconds.
"""
from __future__ import annotations

import logging
import time

LOGGER = logging.getLogger("svgd_rewrite.progress")
_start: float | None = None


def begin_run() -> None:
    """Start the clock of a run (the command line calls it once per invocation)."""
    global _start
    _start = time.perf_counter()


def stage(name: str) -> None:
    """Log the start of stage ``name``."""
    global _start
    if _start is None:
        _start = time.perf_counter()
    elapsed = time.perf_counter() - _start
    LOGGER.info("stage %s at %.1f s", name, elapsed, extra={"stage": name, "elapsed": elapsed})
