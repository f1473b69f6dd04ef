"""Safe output directories: staged in a temporary sibling, then claimed atomically.

The rules ("trust"): nothing is written into the input; OUT_DIR is resolved
once to an absolute path; the tool writes only into a directory it creates, an empty one, or
one that holds its own previous output (recognised by ``svgd_report.json``, and replaced only
with ``overwrite``); it never deletes anything else. A failure at any point leaves OUT_DIR as
it was.

Claiming is atomic: a new OUT_DIR is claimed by ``os.rename`` of the staged directory (the
kernel refuses it once another writer's non-empty directory is there); an existing directory
is claimed by creating a lock directory inside it (``os.mkdir`` succeeds for one writer only)
and is then filled in place, so the directory itself (its permissions, a symlink to it, a
shell's current directory) stays.
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
from typing import Iterator

from .errors import OutputError, one_line

REPORT_FILE = "svgd_report.json"
LOCK_NAME = ".svgd-rewrite.lock"
_STAGING = re.compile(r"^\.(?P<name>.+)\.svgd-(?:tmp|old)-(?P<pid>\d+)-")


def resolve_output_dir(out_dir: str | os.PathLike | None) -> str:
    """OUT_DIR as an absolute path; an empty or blank path is refused."""
    if out_dir is None or not str(out_dir).strip():
        raise OutputError("OUT_DIR is empty: give the directory to write, e.g. ./model_svgd")
    return os.path.abspath(os.fspath(out_dir))


def _inside(path: str, parent: str) -> bool:
    path, parent = os.path.realpath(path), os.path.realpath(parent)
    return path == parent or path.startswith(parent.rstrip(os.sep) + os.sep)


def _holds_previous_output(path: str) -> bool:
    """A previous output holds the report (a dry run's export: only ``graphs/index.html``
    or ``graphs/dot``)."""
    if os.path.isfile(os.path.join(path, REPORT_FILE)):
        return True
    graphs = os.path.join(path, "graphs")
    return (_entries(path) == ["graphs"] and os.path.isdir(graphs)
            and any(os.path.exists(os.path.join(graphs, f)) for f in ("index.html", "dot", "svg",
                                                                       "tensorboard")))


def _entries(path: str) -> list[str]:
    return sorted(e for e in os.listdir(path) if e != LOCK_NAME)


def check_output_dir(out_dir: str, inputs: list[str], overwrite: bool) -> str:
    """Refuse an OUT_DIR that is empty as a string, inside (or equal to) an input, holds an
    input, or is non-empty (unless ``overwrite`` and it holds a previous svgd-rewrite output).
    Returns OUT_DIR as an absolute path."""
    out_dir = resolve_output_dir(out_dir)
    shown = one_line(out_dir)
    for src in inputs:
        if _inside(out_dir, src):
            raise OutputError(f"OUT_DIR {shown} is inside the input {one_line(src)}: choose a "
                              "directory outside the model")
        if _inside(src, out_dir):
            raise OutputError(f"the input {one_line(src)} is inside OUT_DIR {shown}: choose "
                              "another OUT_DIR")
    if os.path.lexists(out_dir) and not os.path.isdir(out_dir):
        raise OutputError(f"OUT_DIR {shown} exists and is not a directory: choose another path")
    if os.path.isdir(out_dir):
        try:
            entries = _entries(out_dir)
        except OSError as e:
            raise OutputError(f"OUT_DIR {shown} cannot be read ({e.strerror or e}): choose "
                              "another directory") from None
        if entries and not overwrite:
            raise OutputError(f"OUT_DIR {shown} exists and is not empty: choose a new or empty "
                              "directory (--overwrite replaces only a previous svgd-rewrite "
                              "output)")
        if entries and not _holds_previous_output(out_dir):
            raise OutputError(f"OUT_DIR {shown} is not empty and holds no previous svgd-rewrite "
                              f"output ({REPORT_FILE}): --overwrite replaces only the tool's own "
                              "output; choose a new or empty directory")
    return out_dir


def _clean_stale(parent: str, name: str) -> None:
    """Remove staging directories of ``name`` left by svgd-rewrite processes that died."""
    try:
        candidates = os.listdir(parent)
    except OSError:
        return
    for entry in candidates:
        m = _STAGING.match(entry)
        if not m or m.group("name") != name:
            continue
        pid = int(m.group("pid"))
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)
            continue  # still running
        except ProcessLookupError:
            shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)
        except OSError:
            continue


def _move_entries(src: str, dst: str, names: list[str]) -> list[str]:
    """Move ``names`` from ``src`` into ``dst``; on failure put back what moved and raise."""
    moved = []
    try:
        for n in names:
            os.rename(os.path.join(src, n), os.path.join(dst, n))
            moved.append(n)
    except OSError:
        for n in reversed(moved):
            with contextlib.suppress(OSError):
                os.rename(os.path.join(dst, n), os.path.join(src, n))
        raise
    return moved


def _fill_existing(tmp: str, out_dir: str, overwrite: bool, parent: str, base: str) -> None:
    """Claim an existing directory with a lock and fill it in place (its old content, a
    previous svgd-rewrite output, is moved aside and deleted once the new one is in)."""
    shown = one_line(out_dir)
    lock = os.path.join(out_dir, LOCK_NAME)
    try:
        os.mkdir(lock)
    except FileExistsError:
        raise OutputError(f"OUT_DIR {shown} is being written by another svgd-rewrite (remove "
                          f"{LOCK_NAME} in it if no other run is active)") from None
    old = None
    try:
        entries = _entries(out_dir)  # re-checked now that this process holds the lock
        if entries and not (overwrite and _holds_previous_output(out_dir)):
            raise OutputError(f"OUT_DIR {shown} was written by another process meanwhile: "
                              "choose another directory")
        if entries:
            old = tempfile.mkdtemp(prefix=f".{base}.svgd-old-{os.getpid()}-", dir=parent)
            _move_entries(out_dir, old, entries)
        try:
            _move_entries(tmp, out_dir, _entries(tmp))
        except OSError:
            if old is not None:
                _move_entries(old, out_dir, _entries(old))
                shutil.rmtree(old, ignore_errors=True)
                old = None
            raise
    finally:
        with contextlib.suppress(OSError):
            os.rmdir(lock)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def staged_output(out_dir: str, inputs: list[str], overwrite: bool) -> Iterator[str]:
    """Yield a temporary directory next to ``out_dir``; put its content in place on success."""
    out_dir = check_output_dir(out_dir, inputs, overwrite)
    shown = one_line(out_dir)
    real = os.path.realpath(out_dir)
    parent, base = os.path.dirname(real), os.path.basename(real) or "out"
    try:
        os.makedirs(parent, exist_ok=True)
        _clean_stale(parent, base)
        tmp = tempfile.mkdtemp(prefix=f".{base}.svgd-tmp-{os.getpid()}-", dir=parent)
    except OSError as e:
        raise OutputError(f"cannot write next to OUT_DIR {shown}: {e.strerror or e}; choose "
                          "a writable location") from None
    try:
        try:
            yield tmp
        except OSError as e:  # a full disk, a permission lost while writing
            raise OutputError(f"cannot write OUT_DIR {shown}: {e.strerror or e}") from None
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        if os.path.isdir(out_dir):
            _fill_existing(tmp, out_dir, overwrite, parent, base)
        else:
            try:
                os.rename(tmp, real)
            except OSError as e:
                if e.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR, errno.ENOTDIR):
                    raise OutputError(f"OUT_DIR {shown} was created by another process while "
                                      "this one was writing: choose another directory") from None
                raise
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OutputError(f"cannot write OUT_DIR {shown}: {e.strerror or e}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
