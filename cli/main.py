"""``svgd-rewrite MODEL_DIR OUT_DIR``: a thin command line over ``svgd_rewrite``."""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
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
  svgd-rewrite ./my_model ./out --function fit_step --scale 0.01 --granularity channel
  svgd-rewrite ./my_model --dry-run                        only show what would be rewired
  svgd-rewrite ./my_model ./out --export html,tensorboard  also write pictures to ./out/graphs
  svgd-rewrite ./train_graph.meta ./out --train-op train   a TF1 graph (+ its checkpoint)
  svgd-rewrite --example                                   build the paper's MLP and rewrite it
  svgd-rewrite --example-fit                               Keras fit with SVGD on the digits

exit codes: 0 done, 2 bad usage or bad input (nothing written), 1 internal error.
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit code 2
        self.exit(EXIT_USAGE, f"{PROG}: error: {message} (see --help)\n")


def _version() -> str:
    try:
        from importlib.metadata import version
        return version("svgd-rewrite")
    except Exception:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
                description="Rewrite the training function of a SavedModel so that it trains "
                            "with virtual gradients (SVGD, Li & Shu).")
    p.add_argument("model_dir", nargs="?", metavar="MODEL_DIR",
                   help="SavedModel directory holding a training tf.function, or a TF1 "
                        "training graph file (.pb, .pbtxt, .meta)")
    p.add_argument("out_dir", nargs="?", metavar="OUT_DIR",
                   help="where to write the rewritten SavedModel (and svgd_report.json)")
    p.add_argument("--function", metavar="NAME",
                   help="train function: attribute or signature key (default: `train`, else "
                        "the only function that computes gradients)")
    p.add_argument("--train-op", metavar="NAME",
                   help="TF1 graphs (.pb/.pbtxt/.meta): the training op (default: the op that "
                        "runs every variable update)")
    # Defaults and op names from the library's one place for each (neither imports TF).
    from svgd_rewrite.options import GRANULARITIES, TRANSFORMS, Options
    from svgd_rewrite.registry import DEFAULT_OPS, OPT_IN_OPS

    p.add_argument("--scale", type=float, default=Options.scale, metavar="S",
                   help="s (default %(default)g)")
    p.add_argument("--rho", type=float, default=Options.rho, metavar="R",
                   help="ρ (default %(default)g)")
    p.add_argument("--epsilon", type=float, default=Options.epsilon, metavar="E",
                   help="ε (default %(default)g)")
    p.add_argument("--ops", metavar="OP,...",
                   help=f"forward op types to transform (default: {', '.join(DEFAULT_OPS)}; "
                        f"opt-in: {', '.join(OPT_IN_OPS)})")
    p.add_argument("--granularity", choices=GRANULARITIES, default=Options.granularity,
                   help="accumulator shape: σ' without the batch axis, or channels only")
    p.add_argument("--transform", choices=TRANSFORMS, default=Options.transform,
                   help="identity: same surgery with T = identity (trains like the input)")
    p.add_argument("--dry-run", action="store_true", help="analyse and report; write nothing")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT_DIR")
    p.add_argument("--export", metavar="FORMAT[,FORMAT...]",
                   help="also write graph pictures under OUT_DIR/graphs: tensorboard, graphml, "
                        "graphs-tuple, dot, svg, html, or all (works with --dry-run)")
    p.add_argument("--example", nargs="?", const="svgd_example", metavar="DIR",
                   help="build the paper's MNIST MLP training SavedModel under DIR "
                        "(default ./svgd_example) and rewrite it")
    p.add_argument("--example-fit", action="store_true",
                   help="train a small Keras model on scikit-learn's digits with fit() and "
                        "virtual gradients (svgd_rewrite.keras), print its history")
    verbosity = p.add_mutually_exclusive_group()
    verbosity.add_argument("-v", "--verbose", action="store_true",
                           help="log progress, TensorFlow's messages and tracebacks")
    verbosity.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    p.add_argument("--version", action="version", version=f"{PROG} {_version()}")
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


def _import_library(verbose: bool):
    if not verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with _stderr_silenced(not verbose):
        import tensorflow as tf

        tf.config.list_logical_devices()  # device start-up messages happen here
        import svgd_rewrite
        from svgd_rewrite import savedmodel
    if not verbose:
        tf.get_logger().setLevel("ERROR")
    return svgd_rewrite, savedmodel


def _run(args, out) -> int:
    from svgd_rewrite.progress import stage

    stage("import")  # TensorFlow's import is the first wait
    svgd_rewrite, savedmodel = _import_library(args.verbose)
    from svgd_rewrite.options import make_options

    options = make_options(scale=args.scale, rho=args.rho, epsilon=args.epsilon, ops=args.ops,
                           granularity=args.granularity, transform=args.transform)
    if args.example_fit:
        return _example_fit(args, out)
    model_dir, out_dir, overwrite = args.model_dir, args.out_dir, args.overwrite
    if args.example is not None:
        build = _fixture("saved_models").build

        model_dir = os.path.join(args.example, "paper_mlp")
        out_dir = out_dir or os.path.join(args.example, "paper_mlp_svgd")
        if not os.path.isdir(model_dir):
            import tensorflow as tf
            from svgd_rewrite.errors import OutputError

            try:
                build("paper_mlp", model_dir)
            except (OSError, tf.errors.OpError) as e:
                raise OutputError(f"cannot write the example into {one_line(args.example)}: "
                                  f"{first_line(e, 200)}; choose a writable DIR") from None
        overwrite = True
        if not args.quiet and not args.json:
            out.write(f"built the paper's MNIST MLP training SavedModel in {model_dir}\n")
    if os.path.lexists(model_dir) and not os.path.isdir(model_dir):  # a TF1 graph file
        from svgd_rewrite import graphdef

        result = graphdef.rewrite_graph_file(
            model_dir, out_dir, options, train_op=args.train_op,
            overwrite=overwrite, dry_run=args.dry_run, export_formats=args.export)
        what = (f"train op: {result.train_op} ({result.variable_kind} variables); initialize "
                f"the accumulators with {result.init_op}"
                + (f" (also run by {', '.join(result.graph_init_ops)})"
                   if result.graph_init_ops else ""))
    else:
        result = savedmodel.rewrite_saved_model(
            model_dir, out_dir, options, function=args.function, overwrite=overwrite,
            dry_run=args.dry_run, export_formats=args.export)
        what = (f"function: {result.function.name}"
                + (f" (signature {result.function.signature!r})" if result.function.signature
                   else ""))
    exported = result.exported
    if args.json:
        out.write(json.dumps(result.to_dict(), indent=2, sort_keys=True) + "\n")
    elif not args.quiet:
        out.write(one_line(what) + "\n")
        out.write(str(result.report) + "\n")
        if result.out_dir and not args.dry_run:
            out.write(f"wrote {result.out_dir} (report: "
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


def _example_fit(args, out) -> int:
    try:
        import sklearn  # noqa: F401
    except ImportError:
        from svgd_rewrite.errors import SVGDRewriteError

        raise SVGDRewriteError("--example-fit needs scikit-learn (its bundled digits): "
                               "pip install scikit-learn") from None
    example = _fixture("keras_fit_example").main

    history = example(epochs=5, verbose=0 if args.quiet else 2)
    if not args.quiet:
        out.write("history: " + json.dumps({k: [round(v, 4) for v in vs]
                                            for k, vs in sorted(history.items())}) + "\n")
    return EXIT_OK


class _ProgressLines(logging.Handler):
    """Stage lines on stderr: always with -v; on a terminal once the run has taken about
    two seconds (the stages before that are shown then); never with -q."""

    DELAY = 2.0

    def __init__(self, stream, always: bool):
        super().__init__()
        self.stream, self.always, self.held = stream, always, []

    def emit(self, record: logging.LogRecord) -> None:
        stage = getattr(record, "stage", None) or record.getMessage()
        line = f"{PROG}: [{getattr(record, 'elapsed', 0.0):6.1f} s] {stage}"
        if self.always or getattr(record, "elapsed", 0.0) >= self.DELAY:
            for held in self.held + [line]:
                self.stream.write(one_line(held) + "\n")
            self.held = []
            self.stream.flush()
        else:
            self.held.append(line)


def _progress_handler(args) -> logging.Handler | None:
    if args.quiet or args.json:
        return None
    if args.verbose:
        return _ProgressLines(sys.stderr, always=True)
    if sys.stderr.isatty():
        return _ProgressLines(sys.stderr, always=False)
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.example is None and not args.example_fit:
        if args.model_dir is None:
            parser.error("MODEL_DIR is required")
        if args.out_dir is None and not args.dry_run:
            parser.error("OUT_DIR is required (or pass --dry-run)")
    # Without -v only errors are logged: TensorFlow's warnings (e.g. about custom gradients
    # of a restored function) are not the user's problem.
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
        return _run(args, sys.stdout)
    except BrokenPipeError:  # stdout closed early (e.g. piped into head)
        return EXIT_OK
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROG}: interrupted; nothing was written\n")
        return 130
    except Exception as e:  # noqa: BLE001 - the one place errors become exit codes
        from svgd_rewrite.errors import SVGDRewriteError

        if args.verbose:
            traceback.print_exc()
        if isinstance(e, SVGDRewriteError):
            sys.stderr.write(f"{PROG}: error: {one_line(e)}\n")
            return EXIT_USAGE
        sys.stderr.write(f"{PROG}: internal error: {type(e).__name__}: {first_line(e, 300)} "
                         "(rerun with -v for the traceback, and please report it)\n")
        return EXIT_INTERNAL
    finally:
        if handler is not None:  # leave the library's logger as it was (in-process callers)
            progress.removeHandler(handler)
            progress.setLevel(saved[0])
            progress.propagate = saved[1]


if __name__ == "__main__":
    sys.exit(main())
