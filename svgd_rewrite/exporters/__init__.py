"""Graph visualization export: what was found and what was rewired, in the viewers people use.

``export(result, out_dir, formats=("all",))`` writes under ``out_dir/graphs/``:
``tensorboard/`` (event files, runs ``rewritten`` and ``original``), ``rewritten.graphml``,
``rewritten_graphs_tuple.npz`` + ``.json``, ``dot/`` and ``svg/`` (each site before/after and
an overview collapsed by name scope), ``index.html``.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Iterable

from ..errors import ExportError, first_line, one_line
from ..options import parse_formats as _parse_formats
from ..ir import GraphIR
from ..progress import stage
from . import dot as dot_mod
from . import overview
from .graphml import write_graphml
from .graphs_tuple import check_available, write_graphs_tuple
from .html_page import write_html
from .roles import ROLE_TITLES, annotated_graph, source_of
from .tensorboard import write_tensorboard

log = logging.getLogger(__name__)


@dataclass
class ExportResult:
    """Files written, by format, and notes (e.g. Graphviz missing)."""

    directory: str
    files: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def parse_formats(formats: Iterable[str] | str) -> tuple[str, ...]:
    """Validate formats (``options.parse_formats``) and that graph-nets is importable when
    ``graphs-tuple`` is asked for."""
    out = _parse_formats(formats)
    if "graphs-tuple" in out:
        check_available()
    return out


def export(result, out_dir: str, formats: Iterable[str] | str = ("all",)) -> ExportResult:
    """Export the graphs of ``result`` (an ``SVGDStep`` or a ``SavedModelResult``) to
    ``out_dir/graphs/``. Reads the result only; never changes it. A writer that fails (a full
    disk, Graphviz failing) raises ``ExportError`` with one line."""
    import shutil
    import subprocess

    import tensorflow as tf

    missing = [a for a in ("report", "graph_def", "original_graph_def", "graph_variables",
                           "edits") if not hasattr(result, a)]
    if missing:
        raise ExportError(f"export() takes a rewrite's result (an SVGDStep, or what "
                          f"rewrite_saved_model returns), got {type(result).__name__}")
    if not isinstance(out_dir, (str, os.PathLike)) or not str(out_dir).strip():
        raise ExportError(f"out_dir must be a directory path, got {out_dir!r}")
    parse_formats(formats)
    target = os.path.join(out_dir, "graphs")
    created = not os.path.lexists(target)  # only a folder this call creates is removed
    try:
        return _export(result, out_dir, formats)
    except BaseException as e:
        if created:
            shutil.rmtree(target, ignore_errors=True)
        if isinstance(e, subprocess.CalledProcessError):
            err = (e.stderr or b"").decode(errors="replace").strip().splitlines()
            raise ExportError(f"Graphviz failed ({one_line(err[-1][:200]) if err else e}): "
                              "nothing was written") from None
        if isinstance(e, subprocess.TimeoutExpired):
            raise ExportError("Graphviz took over 5 minutes on a picture: export fewer "
                              "formats (e.g. --export tensorboard)") from None
        if isinstance(e, tf.errors.OpError):
            raise ExportError(f"cannot write the graphs ({first_line(e, 200)}): nothing was "
                              "written") from None
        raise


def trained_summary(result) -> dict[str, dict] | None:
    """Per site, r's mean, min and max after the steps a step object has run
    (``SVGDStep.diagnostics``), with the number of steps; None before any training."""
    diagnostics = getattr(result, "diagnostics", None)
    if not callable(diagnostics):
        return None
    figures = diagnostics()
    if not any(f["r_max"] > 0 for f in figures.values()):
        return None
    steps = getattr(getattr(result, "state", None), "steps", None)
    return {"steps": int(steps.numpy()) if steps is not None else None,
            "sites": {name: {k: v for k, v in f.items() if k != "r"}
                      for name, f in figures.items()}}


def _export(result, out_dir: str, formats) -> ExportResult:
    chosen = parse_formats(formats)
    stage("export")
    source = source_of(result)
    base = os.path.join(out_dir, "graphs")
    os.makedirs(base, exist_ok=True)
    out = ExportResult(directory=base)
    if "tensorboard" in chosen:
        out.files["tensorboard"] = write_tensorboard(source, base)
    needs_graph = {"graphml", "graphs-tuple", "dot", "svg", "html"} & set(chosen)
    if not needs_graph:
        return out
    graphs = {"rewritten": annotated_graph(source, "rewritten")}
    if "graphml" in chosen:
        out.files["graphml"] = [write_graphml(graphs["rewritten"], base)]
    if "graphs-tuple" in chosen:
        out.files["graphs-tuple"] = list(write_graphs_tuple(graphs["rewritten"], base))
    if not {"dot", "svg", "html"} & set(chosen):
        return out
    graphs["original"] = annotated_graph(source, "original")
    dot_dir = os.path.join(base, "dot")
    os.makedirs(dot_dir, exist_ok=True)
    render = bool({"svg", "html"} & set(chosen))
    if render and not dot_mod.have_graphviz():
        out.notes.append("Graphviz `dot` was not found: wrote .dot files only (install the "
                         "graphviz package for SVG)")
    pictures = {"sites": []}
    dots, svgs = [], []
    graphviz_warnings: list[str] = []

    def write(name: str, text: str) -> tuple[str, str | None]:
        path = os.path.join(dot_dir, name + ".dot")
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        dots.append(path)
        svg = dot_mod.render_svg(path, graphviz_warnings) if render else None
        if svg:
            final = os.path.join(base, "svg", os.path.basename(svg))
            os.makedirs(os.path.dirname(final), exist_ok=True)
            os.replace(svg, final)
            svgs.append(final)
            svg = final
        return svg, text

    ir = GraphIR(source.original)  # one IR for every picture
    sites = source.report.sites
    total = 3 * len(sites) + 1
    for site in sites:
        stage(f"export {3 * site.index + 1}/{total} pictures")
        before = write(f"site_{site.index}_before",
                       dot_mod.site_dot(source, graphs, site, "before", ir))
        after = write(f"site_{site.index}_after", overview.compact_site_dot(source, site, ir))
        detail = write(f"site_{site.index}_after_detail",
                       dot_mod.site_dot(source, graphs, site, "after", ir))
        pictures["sites"].append((site, before[0], before[1], after[0], after[1],
                                  detail[0], detail[1]))
    stage(f"export {total}/{total} pictures")
    st = overview.structure(source, ir)
    pictures["units"] = overview.overview_units(source, ir, st)
    pictures["overview"] = write("overview", overview.overview_dot(source, ir,
                                                                 pictures["units"], st))
    out.notes += [f"Graphviz: {w}" for w in graphviz_warnings]
    if "dot" in chosen or not svgs:
        out.files["dot"] = dots
    if "svg" in chosen and svgs:
        out.files["svg"] = svgs
    if "html" in chosen:
        colors = {ROLE_TITLES[r]: c for r, c in dot_mod.COLORS.items() if r in ROLE_TITLES}
        pictures["trained"] = trained_summary(result)
        out.files["html"] = [write_html(source.report, pictures, base, colors)]
    if "dot" not in chosen and svgs:  # .dot files were only the input of the SVGs
        for path in dots:
            os.remove(path)
        os.rmdir(dot_dir)
    log.info("exported %s to %s", ", ".join(chosen), base)
    return out
