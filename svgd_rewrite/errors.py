"""Exception types raised by svgd-rewrite. Every message is one sentence saying what to do."""


class SVGDRewriteError(Exception):
    """Base class: the input cannot be rewritten as asked (bad input, not an internal bug)."""


class InvalidOptionError(SVGDRewriteError):
    """An option (scale, rho, epsilon, ops, granularity, transform) has a bad value."""


class LoadError(SVGDRewriteError):
    """The step, function, SavedModel or GraphDef could not be loaded."""


class NoTrainableVariablesError(SVGDRewriteError):
    """The step reads no trainable variable."""


class NoGradientsError(SVGDRewriteError):
    """The step computes no gradients / updates no trainable variable."""


class NoSitesError(SVGDRewriteError):
    """No forward op linear in a trainable variable with a matching gradient op was found."""

    def __init__(self, message: str, report=None):
        super().__init__(message)
        self.report = report


class AlreadyRewrittenError(SVGDRewriteError):
    """The step was already rewritten by svgd-rewrite."""


def already_rewritten(what: str = "step") -> AlreadyRewrittenError:
    return AlreadyRewrittenError(f"this {what} was already rewritten by svgd-rewrite: rewrite "
                                 f"the original {what} instead")


class OutputError(SVGDRewriteError):
    """OUT_DIR cannot be written (exists, inside the input, not writable)."""


class UnsupportedError(SVGDRewriteError):
    """The step uses something this version does not support (e.g. tf.distribute replicas)."""


class StepCallError(SVGDRewriteError):
    """A rewritten step was called with arguments that do not fit its input signature."""


class ExportError(SVGDRewriteError):
    """A graph export cannot be written (unknown format, missing optional dependency)."""


def one_line(text: object) -> str:
    """``text`` with every non-printable character (newline, ANSI escape, ...) written as its
    Python escape, so that a name echoed from the input stays on one line."""
    s = str(text)
    if s.isprintable():
        return s
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in s)


def first_line(e: BaseException, limit: int = 240) -> str:
    """The first line of an exception's message (its type when empty), escaped to one line."""
    text = str(e).strip()
    return one_line(text.splitlines()[0][:limit] if text else type(e).__name__)


class SurgeryError(RuntimeError):
    """The rewritten graph failed validation: a bug of the tool (exit 1), never bad input."""


def checked_arguments(fn):
    """``fn`` with bad arguments (an unknown keyword, a missing or extra positional one)
    raising ``InvalidOptionError`` with one line instead of Python's ``TypeError``; the
    signature and docstring stay ``fn``'s."""
    import functools
    import inspect

    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            signature.bind(*args, **kwargs)
        except TypeError as e:
            names = ", ".join(p for p in signature.parameters)
            raise InvalidOptionError(f"{fn.__name__}(): {first_line(e)}; its parameters: "
                                     f"{names}") from None
        return fn(*args, **kwargs)

    return wrapper
