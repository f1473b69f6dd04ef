"""``svgd-rewrite MODEL OUT_DIR`` and ``svgd-rewrite show MODEL``: a thin command line over
``svgd_rewrite``. Arguments are checked before TensorFlow is imported."""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import signal
import sys
import threading
import traceback
from typing import Iterator, Sequence

from svgd_rewrite.errors import first_line, one_line  # no TensorFlow import: start-up stays quiet


def _fixture(name: str):
    """A module of the example fixtures: ``svgd_rewrite.fixtures`` once installed (the
    repository's ``fixtures/`` folder maps there), ``fixtures`` when run from the checkout."""
    import importlib

    parent = __package__.rpartition(".")[0] if __package__ else ""
    return importlib.import_module(f"{parent + '.' if parent else ''}fixtures.{name}")


PROG = "svgd-rewrite"
EXIT_OK, EXIT_INTERNAL, EXIT_USAGE = 0, 1, 2

EPILOG = """\
examples:
  svgd-rewrite ./my_model ./my_model_svgd                  rewrite the function `train`
  svgd-rewrite show ./my_model                             functions, signatures, what would change
  svgd-rewrite ./my_model ./out --function fit_step --scale 0.01 --granularity channel
  svgd-rewrite ./my_model --dry-run                        only show what would be rewired
  svgd-rewrite ./my_model ./out --export html,tensorboard  also write pictures to ./out/graphs
  svgd-rewrite ./my_model ./out --portable                 for TFLite (builtin ops only)
  svgd-rewrite ./train_graph.meta ./out --train-op train   a TF1 graph (+ its checkpoint)
  svgd-rewrite ./model.keras ./out                         a compiled Keras model: a SavedModel
                                                           with train and serve signatures
  svgd-rewrite --example                                   build the paper's MLP and rewrite it
  svgd-rewrite --example-fit --scale 0.01                  Keras fit with SVGD on the digits

OUT_DIR: a new or empty directory; --overwrite replaces a previous output of the tool (every
file listed in its svgd_manifest.json) and refuses a directory holding anything else.
exit codes: 0 done, 2 bad usage or bad input (nothing written), 1 internal error;
128+N stopped by signal N (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP): one line says what
OUT_DIR holds (as it was, or the complete new output).
"""

# Every key of the one JSON object each command prints (``--json``): always all of them, null
# (or empty) where they do not apply. ``show`` and the rewrite share the keys of SHARED_KEYS.
SHARED_KEYS = {
    "version": "the tool's version",
    "input": "MODEL as given",
    "kind": "what MODEL is: \"SavedModel (TF2)\", \"TF1 graph\" or \"Keras model\"",
    "function": "SavedModel or Keras file: the train function's name (its attribute, else "
                "its signature key), e.g. \"train\"; null for a TF1 graph or when nothing "
                "trains",
    "signature": "SavedModel or Keras file: the signature key rewritten with the function, "
                 "else null",
    "train_op": "TF1 graph: the training op, else null",
    "variable_kind": "TF1 graph: \"resource\" or \"ref\" variables, else null",
    "options": "the options (scale, rho, epsilon, ops, granularity, transform, pooling, "
               "post_scale, portable)",
    "report": "the report: sites, skipped (ops kept as identity, with reasons), memory, "
              "options, warnings; null when nothing trains",
    "warnings": "the report's warnings (the scale hint, kernels left on plain gradients, ...)",
    "notes": "remarks in plain sentences (show: why nothing would be rewritten, what to do "
             "with a Keras file; the rewrite: notes of the picture export)",
}
JSON_KEYS = {
    "rewrite": {**SHARED_KEYS,
                "out_dir": "OUT_DIR, absolute; null on a dry run without --export",
                "files": "the files written under OUT_DIR, relative, sorted",
                "dry_run": "true with --dry-run (no model written)",
                "init_op": "TF1 graph: the op that initializes the accumulators, else null",
                "graph_init_ops": "TF1 graph: the graph's own init ops that also run it"},
    "show": {**SHARED_KEYS,
             "functions": "SavedModel: each function and signature: kind, name, inputs, "
                          "chosen, note",
             "model": "Keras file: the model's name, else null",
             "optimizer": "Keras file: the compiled optimizer, else null",
             "loss": "Keras file: the compiled loss, else null",
             "kernels": "Keras file: the kernels svgd_rewrite.keras.enable would transform"},
    "example-fit": {"version": "the tool's version", "options": SHARED_KEYS["options"],
                    "history": "fit()'s history: each metric's value per epoch"},
    "error": {"error": "the one-line error message", "exit": "the exit code (2 or 1)"},
}
_LIST_KEYS = {"files", "notes", "warnings", "functions", "kernels", "graph_init_ops"}

_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$", re.ASCII)


def _number(text: str) -> float:
    """A plain decimal or scientific number (no ``1_0``, no non-ASCII digits, no inf/nan)."""
    if not _NUMBER.match(text.strip()):
        raise argparse.ArgumentTypeError(f"{text!r} is not a plain decimal number (e.g. 0.01 "
                                         "or 1e-3)")
    return float(text)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit code 2
        if getattr(self, "json_errors", False):
            sys.stdout.write(json.dumps({"error": f"{message} (see --help)", "exit": EXIT_USAGE})
                             + "\n")
            self.exit(EXIT_USAGE)
        self.exit(EXIT_USAGE, f"{PROG}: error: {message} (see --help)\n")


def _version() -> str:
    try:
        from importlib.metadata import version
        return version("svgd-rewrite")
    except Exception:
        return "unknown"


def _add_options(p: argparse.ArgumentParser) -> None:
    """The rewrite options (defaults from the library's one place; neither imports TF)."""
    from svgd_rewrite.options import GRANULARITIES, POOLINGS, TRANSFORMS, Options
    from svgd_rewrite.registry import DEFAULT_OPS, OPT_IN_OPS

    p.add_argument("--scale", type=_number, default=None, metavar="S",
                   help=f"s, the virtual gradients' scale (default {Options.scale:g}; with "
                        "--example-fit 0.01; the paper: 0.1 MLP, 0.01 ResNet-20, 0.001 VGG)")
    p.add_argument("--rho", type=_number, default=Options.rho, metavar="R",
                   help="ρ, the accumulator's decay, in [0, 1) (default %(default)g)")
    p.add_argument("--epsilon", type=_number, default=Options.epsilon, metavar="E",
                   help="ε under the square root (default %(default)g)")
    p.add_argument("--ops", metavar="OP,...",
                   help=f"forward op types to transform (default: {', '.join(DEFAULT_OPS)}; "
                        f"opt-in: {', '.join(OPT_IN_OPS)})")
    p.add_argument("--granularity", choices=GRANULARITIES, default=Options.granularity,
                   help="accumulator shape: σ' without the batch axis (full), channels only, "
                        "or auto (channel for convolutions whose full r exceeds their "
                        "parameters)")
    p.add_argument("--transform", choices=TRANSFORMS, default=Options.transform,
                   help="identity: same surgery with T = identity (trains like the input)")
    p.add_argument("--pooling", choices=POOLINGS, default=Options.pooling,
                   help="one accumulator per trained variable (default), or per application")
    p.add_argument("--no-post-scale", dest="post_scale", action="store_false",
                   help="always scale g (Figure 6 as drawn) instead of P's output")
    p.add_argument("--portable", action="store_true", default=None,
                   help="only ops XLA compiles and TFLite has as builtins (for TFLite "
                        "conversion; jit-compiled steps get them anyway)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
                description="Rewrite the training function of a SavedModel (or a TF1 "
                            "training graph) so that it trains with virtual gradients (SVGD, "
                            "Li & Shu). `svgd-rewrite show MODEL` lists what is in a model.")
    p.add_argument("model_dir", nargs="?", metavar="MODEL",
                   help="SavedModel directory holding a training tf.function, a TF1 "
                        "training graph file (.pb, .pbtxt, .meta), or a compiled Keras model "
                        "(.keras)")
    p.add_argument("out_dir", nargs="?", metavar="OUT_DIR",
                   help="where to write the rewritten model, svgd_report.json and "
                        "svgd_manifest.json")
    p.add_argument("--function", metavar="NAME",
                   help="train function: attribute or signature key (default: `train`, else "
                        "the only function that computes gradients)")
    p.add_argument("--train-op", metavar="NAME",
                   help="TF1 graphs (.pb/.pbtxt/.meta): the training op (default: the op that "
                        "runs every variable update)")
    _add_options(p)
    p.add_argument("--dry-run", action="store_true",
                   help="analyse and report; write no model (with --export, only the pictures "
                        "under OUT_DIR/graphs)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object (version, input, out_dir, files written, "
                        "options, report, warnings); errors as {\"error\": ..., \"exit\": 2}")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a previous svgd-rewrite output in OUT_DIR (only if every file "
                        "in it is listed in its svgd_manifest.json)")
    p.add_argument("--export", metavar="FORMAT[,FORMAT...]",
                   help="also write graph pictures under OUT_DIR/graphs: tensorboard, graphml, "
                        "graphs-tuple, dot, svg, html, or all (works with --dry-run)")
    p.add_argument("--example", nargs="?", const="svgd_example", metavar="DIR",
                   help="build the paper's MNIST MLP training SavedModel under DIR "
                        "(default ./svgd_example) and rewrite it into DIR/paper_mlp_svgd "
                        "(takes the rewrite options; a rerun replaces the tool's own earlier "
                        "example output and refuses any other folder there)")
    p.add_argument("--example-fit", action="store_true",
                   help="train a small Keras model on scikit-learn's digits with fit() and "
                        "virtual gradients (svgd_rewrite.keras), print its history (takes "
                        "--scale, --granularity, ...; no MODEL or OUT_DIR)")
    _verbosity(p)
    p.add_argument("--version", action="version", version=f"{PROG} {_version()}")
    return p


def _verbosity(p: argparse.ArgumentParser) -> None:
    verbosity = p.add_mutually_exclusive_group()
    verbosity.add_argument("-v", "--verbose", action="store_true",
                           help="progress with timings, and tracebacks on errors")
    verbosity.add_argument("-q", "--quiet", action="store_true",
                           help="print nothing on success (no progress lines)")
    p.add_argument("--tf-logs", action="store_true", help="show TensorFlow's own log messages")


def build_show_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=f"{PROG} show", formatter_class=argparse.RawDescriptionHelpFormatter,
                description="What is in a model: its functions and signatures with their "
                            "inputs, which would be rewritten and why, and the sites a rewrite "
                            "would find (a dry run's report).")
    p.add_argument("model_dir", metavar="MODEL",
                   help="SavedModel directory, .pb/.pbtxt/.meta graph, or .keras/.h5 model")
    p.add_argument("--function", metavar="NAME", help="the function to analyse (as for the "
                                                      "rewrite)")
    p.add_argument("--train-op", metavar="NAME", help="TF1 graphs: the training op")
    _add_options(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    _verbosity(p)
    return p


@contextlib.contextmanager
def _stderr_silenced(active: bool) -> Iterator[None]:
    """Silence fd 2 (TensorFlow's native start-up logging) while active."""
    if not active:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _import_library(tf_logs: bool):
    if not tf_logs:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with _stderr_silenced(not tf_logs):
        import tensorflow as tf

        tf.config.list_logical_devices()  # device start-up messages happen here
        import svgd_rewrite.runner  # noqa: F401  (the library, TensorFlow loaded)
    if not tf_logs:
        tf.get_logger().setLevel("ERROR")


def _options(args, default_scale: float | None = None):
    from svgd_rewrite.options import Options, make_options

    scale = args.scale if args.scale is not None else (default_scale or Options.scale)
    return make_options(scale=scale, rho=args.rho, epsilon=args.epsilon, ops=args.ops,
                        granularity=args.granularity, transform=args.transform,
                        pooling=args.pooling, post_scale=args.post_scale,
                        portable=args.portable)


def _check_arguments(args) -> None:
    """What can be refused before TensorFlow is imported (exit 2, one line)."""
    from svgd_rewrite.errors import LoadError, OutputError, SVGDRewriteError

    if args.example_fit and (args.model_dir or args.out_dir or args.example is not None):
        raise SVGDRewriteError("--example-fit takes no MODEL, OUT_DIR or --example: it trains "
                               "its own Keras model")
    if args.export is not None and not args.export.strip():
        raise SVGDRewriteError("--export is empty: name formats (tensorboard, graphml, "
                               "graphs-tuple, dot, svg, html) or all")
    if args.export:
        from svgd_rewrite.options import parse_formats

        parse_formats(args.export)
    path = args.model_dir
    if path is None or args.example is not None or args.example_fit:
        return
    if not os.path.lexists(path):
        raise LoadError(f"MODEL {one_line(path)} does not exist: give a SavedModel directory "
                        "or a .pb/.pbtxt/.meta file")
    if args.out_dir is not None and not args.out_dir.strip():
        raise OutputError("OUT_DIR is empty: give the directory to write, e.g. ./model_svgd")


def _files_under(root: str) -> list[str]:
    out = []
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            out.append(os.path.relpath(os.path.join(dirpath, name), root))
    return sorted(out)


def _run(args, out) -> int:
    from svgd_rewrite.progress import stage

    _check_arguments(args)
    # refused here, before TensorFlow's import
    options = _options(args, default_scale=0.01 if args.example_fit else None)
    stage("import")  # TensorFlow's import is the first wait
    _import_library(args.tf_logs)
    if args.example_fit:
        return _example_fit(args, out, options)
    model_dir, out_dir, overwrite = args.model_dir, args.out_dir, args.overwrite
    if args.example is not None:
        model_dir, out_dir, overwrite = _build_example(args, out)
    result, front = _rewrite(args, model_dir, out_dir, options, overwrite)
    exported = result.exported
    if result.out_dir and (exported or not args.dry_run):
        args.written = result.out_dir  # what an interrupt from here on says
    written = (_files_under(result.out_dir) if result.out_dir and os.path.isdir(result.out_dir)
               else [])
    if args.json:
        _write_json(out, "rewrite", {
            "input": model_dir, **front.identify(result), "out_dir": result.out_dir,
            "files": written, "dry_run": bool(args.dry_run), "options": options.to_dict(),
            "report": result.report.to_dict(), "warnings": result.report.warnings,
            "notes": list(exported.notes) if exported else []})
    elif not args.quiet:
        out.write(one_line(front.summary(result)) + "\n")
        out.write(result.report.text(planned=bool(args.dry_run)) + "\n")
        if result.out_dir and not args.dry_run:
            out.write(f"wrote {result.out_dir} ({len(written)} files; report: "
                      f"{os.path.join(result.out_dir, 'svgd_report.json')})\n")
        elif not exported:
            out.write("dry run: nothing written\n")
        if exported:
            final = os.path.join(result.out_dir, "graphs")
            out.write(f"graphs in {final}: " + ", ".join(
                f"{fmt} ({len(files)} file(s))" for fmt, files in exported.files.items()) + "\n")
            if "html" in exported.files:
                out.write(f"  open {os.path.join(final, 'index.html')} in a browser\n")
            if "tensorboard" in exported.files:
                out.write(f"  tensorboard --logdir {os.path.join(final, 'tensorboard')}\n")
            for note in exported.notes:
                out.write(f"  note: {note}\n")
    return EXIT_OK


def _rewrite(args, model_dir, out_dir, options, overwrite: bool):
    from svgd_rewrite.runner import open_model, run

    front = open_model(model_dir, function=args.function, train_op=args.train_op)
    result = run(front, out_dir, options, overwrite=overwrite, dry_run=args.dry_run,
                 export_formats=args.export)
    return result, front


def _write_json(out, command: str, values: dict) -> None:
    """One JSON object holding every key of ``JSON_KEYS[command]`` (null where none)."""
    payload = {key: [] if key in _LIST_KEYS else None for key in JSON_KEYS[command]}
    payload.update(values, version=_version())
    out.write(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


def _replaceable(path: str) -> bool:
    """Missing, an empty directory, or the tool's own earlier output (its manifest verifies)."""
    from svgd_rewrite.output_dir import is_own_output

    if not os.path.lexists(path):
        return True
    if os.path.isdir(path) and not os.path.islink(path) and not os.listdir(path):
        return True
    return is_own_output(path)


def _build_example(args, out) -> tuple[str, str, bool]:
    """Build the paper's MLP afresh in DIR/paper_mlp; return it, OUT_DIR and whether OUT_DIR
    may be replaced. A rerun replaces the example's own earlier output (DIR/paper_mlp and
    DIR/paper_mlp_svgd, proven the tool's by their manifests) and refuses anything else."""
    import tensorflow as tf
    from svgd_rewrite.errors import OutputError
    from svgd_rewrite.output_dir import check_output_dir, staged_output

    model_dir = os.path.join(args.example, "paper_mlp")
    out_dir = args.out_dir or os.path.join(args.example, "paper_mlp_svgd")
    overwrite = args.overwrite or not args.out_dir
    for path in [model_dir] + ([] if args.out_dir else [out_dir]):
        if not _replaceable(path):
            raise OutputError(f"{one_line(path)} exists and is not svgd-rewrite's own earlier "
                              "example output: move it away or choose another DIR")
    check_output_dir(out_dir, [model_dir], overwrite)  # refused before anything is built
    try:
        with staged_output(model_dir, [], overwrite=True) as tmp:
            _fixture("saved_models").build("paper_mlp", tmp)
    except (OSError, tf.errors.OpError) as e:
        raise OutputError(f"cannot write the example into {one_line(args.example)}: "
                          f"{first_line(e, 200)}; choose a writable DIR") from None
    if not args.quiet and not args.json:
        out.write(f"built the paper's MNIST MLP training SavedModel in {model_dir}\n")
    return model_dir, out_dir, overwrite


def _example_fit(args, out, options) -> int:
    try:
        import sklearn  # noqa: F401
    except ImportError:
        from svgd_rewrite.errors import SVGDRewriteError

        raise SVGDRewriteError("--example-fit needs scikit-learn (its bundled digits): "
                               "pip install scikit-learn") from None
    example = _fixture("keras_fit_example").main

    history = example(epochs=5, verbose=0 if args.quiet or args.json else 2,
                      **{**options.to_dict(), "ops": list(options.ops)})
    if args.json:
        _write_json(out, "example-fit", {"options": options.to_dict(), "history": history})
    elif not args.quiet:
        out.write("history: " + json.dumps({k: [round(v, 4) for v in vs]
                                            for k, vs in sorted(history.items())}) + "\n")
    return EXIT_OK


# --- show ----------------------------------------------------------------------------------

def _show(args, out) -> int:
    from svgd_rewrite.errors import LoadError

    options = _options(args)
    path = args.model_dir
    if not os.path.lexists(path):
        raise LoadError(f"MODEL {one_line(path)} does not exist")
    _import_library(args.tf_logs)
    from svgd_rewrite.runner import open_model

    info = open_model(path, function=args.function, train_op=args.train_op).describe(options)
    report = info.pop("report", None)
    if args.json:
        _write_json(out, "show", {**info, "options": options.to_dict(),
                                  "report": report.to_dict() if report else None,
                                  "warnings": report.warnings if report else []})
        return EXIT_OK
    _show_text(info, report, out)
    return EXIT_OK


def _show_text(info: dict, report, out) -> None:
    out.write(f"{info['input']}: {info['kind']}"
              + (f" {info['model']!r}" if info.get("model") else "") + "\n")
    for fn in info.get("functions", []):
        marker = "→" if fn.get("chosen") else " "
        out.write(f" {marker} {fn['kind']} {fn['name']}({', '.join(fn['inputs'])})"
                  + (f"  [{fn['note']}]" if fn.get("note") else "") + "\n")
    for key in ("function", "signature", "train_op", "variable_kind", "optimizer", "loss"):
        if info.get(key):
            out.write(f"{key.replace('_', ' ')}: {info[key]}\n")
    for note in info.get("notes", []):
        out.write(note + "\n")
    if report is not None:
        out.write(report.text(planned=True) + "\n")


class _ProgressLines(logging.Handler):
    """Stage lines on stderr, one per stage (``-v`` adds the elapsed time); never with ``-q``
    or ``--json``."""

    def __init__(self, stream, timings: bool):
        super().__init__()
        self.stream, self.timings = stream, timings

    def emit(self, record: logging.LogRecord) -> None:
        stage = getattr(record, "stage", None) or record.getMessage()
        elapsed = getattr(record, "elapsed", 0.0)
        line = f"{PROG}: [{elapsed:6.1f} s] {stage}" if self.timings else f"{PROG}: {stage}"
        self.stream.write(one_line(line) + "\n")
        self.stream.flush()


def _progress_handler(args) -> logging.Handler | None:
    if args.quiet or args.json:
        return None
    return _ProgressLines(sys.stderr, timings=args.verbose)


class _Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP: the run ends the way a Ctrl-C ends it (its staging directory
    removed, OUT_DIR as it was or holding the complete new output)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _stop(signum, _frame):
    raise _Stopped(signum)


@contextlib.contextmanager
def _stopping_on_signals() -> Iterator[None]:
    """SIGTERM and SIGHUP raise ``_Stopped`` while the run lasts (where they have their
    default action: an ignored signal, e.g. under nohup, stays ignored)."""
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for name in ("SIGTERM", "SIGHUP"):
            signum = getattr(signal, name, None)
            if signum is not None and signal.getsignal(signum) == signal.SIG_DFL:
                previous[signum] = signal.signal(signum, _stop)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    show = bool(argv) and argv[0] == "show"
    parser = build_show_parser() if show else build_parser()
    parser.json_errors = "--json" in argv
    try:
        args = parser.parse_args(argv[1:] if show else argv)
    except SystemExit as e:  # a usage error (exit 2, one line) or --help/--version (0)
        return int(e.code or 0)
    if not show and args.example is None and not args.example_fit:
        try:
            if args.model_dir is None:
                parser.error("MODEL is required (or `svgd-rewrite show MODEL`, --example)")
            if args.out_dir is None and not args.dry_run:
                parser.error("OUT_DIR is required (or pass --dry-run)")
        except SystemExit as e:
            return int(e.code or 0)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR,
                        format=f"{PROG}: %(message)s")
    progress = logging.getLogger("svgd_rewrite.progress")
    handler = _progress_handler(args)
    saved = (progress.level, progress.propagate)
    if handler is not None:
        progress.addHandler(handler)
        progress.setLevel(logging.INFO)
        progress.propagate = False
    try:
        from svgd_rewrite import progress as progress_clock

        progress_clock.begin_run()
        with _stopping_on_signals():
            return _show(args, sys.stdout) if show else _run(args, sys.stdout)
    except BrokenPipeError:  # stdout closed early (e.g. piped into head)
        return EXIT_OK
    except KeyboardInterrupt as e:  # Ctrl-C, SIGTERM, SIGHUP
        signum = getattr(e, "signum", signal.SIGINT)
        how = ("interrupted" if signum == signal.SIGINT
               else f"stopped by {signal.Signals(signum).name}")
        written = getattr(args, "written", None)
        state = getattr(e, "output_state", None) or (
            f"OUT_DIR {one_line(written)} holds the complete new output" if written
            else "nothing was written")
        sys.stderr.write(f"{PROG}: {how}; {state}\n")
        return 128 + signum
    except Exception as e:  # noqa: BLE001 - the one place errors become exit codes
        from svgd_rewrite.errors import SVGDRewriteError

        if args.verbose:
            traceback.print_exc()
        if isinstance(e, SVGDRewriteError):
            message = _cli_spelling(one_line(e))
            if args.json:
                sys.stdout.write(json.dumps({"error": message, "exit": EXIT_USAGE}) + "\n")
            else:
                sys.stderr.write(f"{PROG}: error: {message}\n")
            return EXIT_USAGE
        message = (f"internal error: {type(e).__name__}: {first_line(e, 300)} (rerun with -v "
                   "for the traceback, and please report it)")
        if args.json:
            sys.stdout.write(json.dumps({"error": message, "exit": EXIT_INTERNAL}) + "\n")
        else:
            sys.stderr.write(f"{PROG}: {message}\n")
        return EXIT_INTERNAL
    finally:
        if handler is not None:  # leave the library's logger as it was (in-process callers)
            progress.removeHandler(handler)
            progress.setLevel(saved[0])
            progress.propagate = saved[1]


def _cli_spelling(message: str) -> str:
    """Library advice in the command line's spelling (``transform='identity'`` →
    ``--transform identity``)."""
    return (message.replace("transform='identity'", "--transform identity")
            .replace("granularity='channel'", "--granularity channel"))


if __name__ == "__main__":
    sys.exit(main())
