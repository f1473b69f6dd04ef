"""Safe output directories: written to a temporary sibling and renamed into place.

Nothing is written into the input; an error at any point leaves no OUT_DIR behind (and an
existing OUT_DIR replaced with ``overwrite`` is only removed once the new one is complete).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import Iterator

from .errors import OutputError


def _inside(path: str, parent: str) -> bool:
    path, parent = os.path.realpath(path), os.path.realpath(parent)
    return path == parent or path.startswith(parent.rstrip(os.sep) + os.sep)


def check_output_dir(out_dir: str, inputs: list[str], overwrite: bool) -> None:
    """Refuse an OUT_DIR inside (or equal to) an input, or an existing non-empty one."""
    for src in inputs:
        if _inside(out_dir, src):
            raise OutputError(f"OUT_DIR {out_dir} is inside the input {src}: choose a directory "
                              "outside the model")
        if os.path.isdir(src) and _inside(src, out_dir):
            raise OutputError(f"the input {src} is inside OUT_DIR {out_dir}: choose another "
                              "OUT_DIR")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise OutputError(f"OUT_DIR {out_dir} exists and is not a directory: choose another path")
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not overwrite:
        raise OutputError(f"OUT_DIR {out_dir} exists and is not empty: pass --overwrite "
                          "(overwrite=True) or choose another directory")


@contextlib.contextmanager
def staged_output(out_dir: str, inputs: list[str], overwrite: bool) -> Iterator[str]:
    """Yield a temporary directory next to ``out_dir``; rename it into place on success."""
    check_output_dir(out_dir, inputs, overwrite)
    out_dir = os.path.abspath(out_dir)
    parent = os.path.dirname(out_dir)
    try:
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.svgd-tmp-", dir=parent)
    except OSError as e:
        raise OutputError(f"cannot write next to OUT_DIR {out_dir}: {e.strerror or e}; choose "
                          "a writable location") from None
    try:
        yield tmp
        old = None
        if os.path.exists(out_dir):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.svgd-old-", dir=parent)
            os.rename(out_dir, os.path.join(old, "previous"))
        try:
            os.rename(tmp, out_dir)
        except OSError:
            if old is not None:  # put the previous OUT_DIR back
                os.rename(os.path.join(old, "previous"), out_dir)
                shutil.rmtree(old, ignore_errors=True)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OutputError(f"cannot write OUT_DIR {out_dir}: {e.strerror or e}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
