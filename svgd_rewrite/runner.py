"""One runner for every model file, and one dispatcher that opens whatever MODEL is.

A file front end owns its whole trip: ``check`` (refuse bad input before any TensorFlow
work), ``load``/``finish`` (the pipeline's ends), ``prepare`` and ``write`` (its model files
into the staged output), ``describe`` (what ``svgd-rewrite show`` prints), ``summary`` (one
line naming what was rewritten) and ``identify`` (the same as the fields of the command line's
JSON). ``run`` does the rest the same way for every format: check the output directory →
the pipeline → staged output → the front end writes → the report → the exports. The command
line is argparse and printing around ``open_model`` and ``run``."""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Iterable, Protocol

from .errors import InvalidOptionError, LoadError, OutputError, one_line
from .exporters import export, parse_formats
from .frontend import FrontEnd, RewriteResult, rewrite_with
from .graphdef import GRAPH_SUFFIXES, GraphFileFrontEnd
from .options import Options
from .output_dir import REPORT_FILE, check_output_dir, staged_output
from .progress import stage
from .savedmodel import SavedModelFrontEnd

log = logging.getLogger(__name__)

KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")


class ModelFrontEnd(FrontEnd, Protocol):
    """A front end for a model on disk (see the module docstring)."""

    inputs: list[str]  # the paths the output must not overlap

    def check(self) -> None: ...

    def prepare(self, result: RewriteResult) -> Any: ...

    def write(self, result: RewriteResult, prepared: Any, out_dir: str) -> None: ...

    def describe(self, options: Options) -> dict: ...

    def identify(self, result: RewriteResult) -> dict: ...

    def summary(self, result: RewriteResult) -> str: ...


def open_model(path: str, *, function: str | None = None,
               train_op: str | None = None) -> ModelFrontEnd:
    """The front end for ``path``: a SavedModel directory, a ``.pb``/``.pbtxt``/``.meta``
    TF1 graph, or a Keras model file; ``LoadError`` with what to give otherwise."""
    if path is None or not str(path).strip():
        raise LoadError("MODEL is empty: give a SavedModel directory or a .pb/.pbtxt/.meta file")
    if not os.path.lexists(path):
        raise LoadError(f"MODEL {one_line(path)} does not exist: give a SavedModel directory "
                        "or a .pb/.pbtxt/.meta file")
    if not os.path.isdir(path) and not os.path.isfile(path):
        # a FIFO or a device, which would block the reader or never end: never opened
        raise LoadError(f"MODEL {one_line(path)} is not a regular file or a directory: give "
                        "a SavedModel directory, a .pb/.pbtxt/.meta graph or a .keras/.h5 "
                        "model")
    if str(path).endswith(KERAS_SUFFIXES):
        from .keras_file import KerasFileFrontEnd

        return KerasFileFrontEnd(path)
    if os.path.isdir(path):
        return SavedModelFrontEnd(path, function)
    if not str(path).endswith(GRAPH_SUFFIXES):
        raise LoadError(f"MODEL {one_line(path)} is a file but not a .pb, .pbtxt or .meta graph "
                        "(nor a SavedModel directory)")
    return GraphFileFrontEnd(path, train_op)


def _check_path(name: str, value) -> None:
    if not isinstance(value, (str, os.PathLike)) or not str(value).strip():
        raise LoadError(f"{name} must be the path of the model, got {value!r}")


def run(front: ModelFrontEnd, out_dir: str | None, options: Options | None = None, *,
        overwrite: bool = False, dry_run: bool = False,
        export_formats: Iterable[str] | str | None = None) -> RewriteResult:
    """Rewrite ``front``'s model into ``out_dir`` (staged, then committed: a failure leaves
    ``out_dir`` as it was); ``dry_run``: write no model (with ``export_formats`` the pictures
    still go to ``out_dir/graphs/``). Returns the front end's result with ``out_dir`` and
    ``exported`` set."""
    options = options or Options()
    if not isinstance(options, Options):
        raise InvalidOptionError(f"options must be an Options (svgd_rewrite.options."
                                 f"make_options(...)), got {type(options).__name__}")
    if out_dir is not None and (not isinstance(out_dir, (str, os.PathLike))
                                or not str(out_dir).strip()):
        raise OutputError(f"out_dir must be a directory path, got {out_dir!r}")
    formats = parse_formats(export_formats) if export_formats else ()
    front.check()
    if out_dir is None and (formats or not dry_run):
        raise OutputError("OUT_DIR is required" + (" for --export (graphs go to OUT_DIR/graphs)"
                                                   if formats else " (or use --dry-run)"))
    if out_dir is not None:
        out_dir = check_output_dir(out_dir, front.inputs, overwrite)
    result = rewrite_with(front, options)
    if dry_run and not formats:
        return result
    prepared = None
    if not dry_run:
        stage("emit")
        prepared = front.prepare(result)
    stage("write")
    with staged_output(out_dir, front.inputs, overwrite) as tmp:
        if not dry_run:
            front.write(result, prepared, tmp)
            with open(os.path.join(tmp, REPORT_FILE), "w") as f:
                json.dump(result.to_dict(), f, indent=2, sort_keys=True)
        if formats:
            result.exported = export(result, tmp, formats)
    result.out_dir = out_dir
    log.info("wrote %s", out_dir)
    return result


def rewrite_saved_model(model_dir: str, out_dir: str | None, options: Options | None = None, *,
                        function: str | None = None, overwrite: bool = False,
                        dry_run: bool = False,
                        export_formats: Iterable[str] | str | None = None):
    """Rewrite the train function of the SavedModel in ``model_dir`` into ``out_dir`` (what
    the command line runs).

    - ``model_dir``: a TF2 SavedModel directory with a training ``tf.function``.
    - ``out_dir``: a new or empty directory, or (``overwrite=True``) a previous output of the
      tool (every file listed in its ``svgd_manifest.json``); None only with ``dry_run``.
    - ``options``: an ``Options`` from ``svgd_rewrite.options.make_options(...)`` (default:
      the defaults; see ``svgd_rewrite.rewrite`` for each option).
    - ``function``: the attribute or signature key to rewrite (default ``train``, else the
      only function that applies gradients).
    - ``overwrite``: replace a previous svgd-rewrite output in ``out_dir``.
    - ``dry_run``: write no model; with ``export_formats`` the graph pictures still go to
      ``out_dir/graphs/`` (see ``svgd_rewrite.export``).
    - ``export_formats``: ``"all"`` or a comma-separated list of ``tensorboard``,
      ``graphml``, ``graphs-tuple``, ``dot``, ``svg``, ``html``.

    The output holds every variable of the input plus the accumulators, the rewritten train
    function under its name and signature key, every other function unchanged,
    ``svgd_report.json`` and ``svgd_manifest.json``. Returns a ``SavedModelResult``
    (``report``, ``function``, ``out_dir``, ``exported``). Raises ``LoadError``,
    ``NoGradientsError``, ``OutputError`` (nothing is written), and what
    ``svgd_rewrite.rewrite`` raises.
    """
    _check_path("model_dir", model_dir)
    return run(SavedModelFrontEnd(model_dir, function), out_dir, options, overwrite=overwrite,
               dry_run=dry_run, export_formats=export_formats)


def rewrite_graph_file(model_path: str, out_dir: str | None, options: Options | None = None, *,
                       train_op: str | None = None, overwrite: bool = False,
                       dry_run: bool = False, export_formats=None):
    """Rewrite a ``.pb``/``.pbtxt``/``.meta`` training graph into ``out_dir`` (same format,
    same file name, plus ``svgd_report.json`` and, for a MetaGraph, its checkpoint)."""
    _check_path("model_path", model_path)
    return run(GraphFileFrontEnd(model_path, train_op), out_dir, options, overwrite=overwrite,
               dry_run=dry_run, export_formats=export_formats)
