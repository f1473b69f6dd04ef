"""Safe output directories: staged in a temporary sibling, committed by renames, replaced only
when every file in them is the tool's own.

The rules ("trust"):

- nothing is written into the input; OUT_DIR is resolved once to an absolute path;
- the tool writes into a new or empty directory, or replaces (``overwrite``) a previous
  output of its own: a directory whose every file is listed, with its size and SHA-256, in
  the ``svgd_manifest.json`` the tool wrote there. Any other entry (a user's notes, a report
  copied in by hand) makes it refuse, naming that entry; it never deletes anything else;
- a failure at any point leaves OUT_DIR as it was.

The commit is a sequence of renames, each atomic: the new output is written completely into
``.NAME.svgd-tmp-PID-*`` beside OUT_DIR, with its manifest; a new or empty OUT_DIR is then
claimed by one ``rename``; a previous output is moved aside to ``.NAME.svgd-old-PID-*`` and
the new one renamed into place, and only then is the old one deleted. A process killed at any
point leaves either the complete old output or the complete new one in OUT_DIR, or — between
the two renames — OUT_DIR missing and the complete old output in the ``svgd-old`` sibling,
which the next run on that OUT_DIR moves back first. Leftover staging directories of dead
processes are removed by the next run. Two writers racing for one OUT_DIR: exactly one wins.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import secrets
import shutil
import tempfile
from typing import Iterator

from .errors import OutputError, first_line, one_line

REPORT_FILE = "svgd_report.json"
MANIFEST_FILE = "svgd_manifest.json"
_STAGING = re.compile(r"^\.(?P<name>.+)\.svgd-(?P<kind>tmp|old)-(?P<pid>\d+)-")


class FileSystem:
    """The filesystem calls of the commit path, in one object so that a test can stop the
    process before any one of them (``tests/test_output_dir.py``)."""

    def mkdtemp(self, prefix: str, dir: str) -> str:
        return tempfile.mkdtemp(prefix=prefix, dir=dir)

    def makedirs(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)

    def rename(self, src: str, dst: str) -> None:
        os.rename(src, dst)

    def rmtree(self, path: str) -> None:
        shutil.rmtree(path, ignore_errors=True)

    def chmod(self, path: str, mode: int) -> None:
        os.chmod(path, mode)

    def write_text(self, path: str, text: str) -> None:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


_fs = FileSystem()


def resolve_output_dir(out_dir: str | os.PathLike | None) -> str:
    """OUT_DIR as an absolute path; an empty or blank path is refused."""
    if out_dir is None or not str(out_dir).strip():
        raise OutputError("OUT_DIR is empty: give the directory to write, e.g. ./model_svgd")
    return os.path.abspath(os.fspath(out_dir))


def _inside(path: str, parent: str) -> bool:
    path, parent = os.path.realpath(path), os.path.realpath(parent)
    return path == parent or path.startswith(parent.rstrip(os.sep) + os.sep)


def _digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _files(root: str) -> list[str]:
    """Every file below ``root`` (relative, '/'-separated), symlinks included as files."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            out.append(name if rel == "." else f"{rel}/{name}".replace(os.sep, "/"))
    return sorted(out)


def write_manifest(root: str) -> dict:
    """List every file under ``root`` with its size and SHA-256, and every directory, in
    ``root/svgd_manifest.json``."""
    files = {rel: {"size": os.path.getsize(os.path.join(root, rel)),
                   "sha256": _digest(os.path.join(root, rel))}
             for rel in _files(root) if rel != MANIFEST_FILE}
    dirs = sorted(os.path.relpath(os.path.join(d, n), root).replace(os.sep, "/")
                  for d, names, _ in os.walk(root) for n in names)
    manifest = {"tool": "svgd-rewrite", "format": 1, "files": files, "directories": dirs}
    _fs.write_text(os.path.join(root, MANIFEST_FILE), json.dumps(manifest, indent=1,
                                                                 sort_keys=True))
    return manifest


def foreign_entry(path: str) -> str | None:
    """The first entry of directory ``path`` that is not svgd-rewrite's own output (not in
    its manifest, or changed since), or None when every file is the tool's."""
    manifest_path = os.path.join(path, MANIFEST_FILE)
    try:
        with open(manifest_path, encoding="utf-8") as f:
            manifest = json.load(f)
        listed = manifest["files"] if manifest.get("tool") == "svgd-rewrite" else None
        if not isinstance(listed, dict):
            raise ValueError
    except FileNotFoundError:
        entries = sorted(os.listdir(path))
        return entries[0] if entries else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return MANIFEST_FILE
    for rel in _files(path):
        if rel == MANIFEST_FILE:
            continue
        full = os.path.join(path, rel)
        record = listed.get(rel)
        if (record is None or os.path.islink(full) or os.path.getsize(full) != record.get("size")
                or _digest(full) != record.get("sha256")):
            return rel
    directories = set(manifest.get("directories") or ())
    for dirpath, dirnames, _ in os.walk(path):  # directories a user added
        for d in dirnames:
            rel = os.path.relpath(os.path.join(dirpath, d), path).replace(os.sep, "/")
            if rel not in directories and not any(r.startswith(rel + "/") for r in listed):
                return rel
    return None


def _refusal(shown: str, entry: str) -> OutputError:
    return OutputError(
        f"OUT_DIR {shown} holds {one_line(entry)!r}, which is not svgd-rewrite's own output "
        f"(not listed in its {MANIFEST_FILE}): --overwrite replaces only the tool's own "
        "files; move it away or choose another directory")


def check_output_dir(out_dir: str, inputs: list[str], overwrite: bool) -> str:
    """Refuse an OUT_DIR that is empty as a string, inside (or equal to) an input, holds an
    input, or is non-empty (unless ``overwrite`` and it holds only a previous svgd-rewrite
    output). Restores an output a killed run left aside first. Returns OUT_DIR absolute."""
    out_dir = resolve_output_dir(out_dir)
    shown = one_line(out_dir)
    for src in inputs:
        if _inside(out_dir, src):
            raise OutputError(f"OUT_DIR {shown} is inside the input {one_line(src)}: choose a "
                              "directory outside the model")
        if _inside(src, out_dir):
            raise OutputError(f"the input {one_line(src)} is inside OUT_DIR {shown}: choose "
                              "another OUT_DIR")
    recover(out_dir)
    if os.path.lexists(out_dir) and not os.path.isdir(out_dir):
        raise OutputError(f"OUT_DIR {shown} exists and is not a directory: choose another path")
    if os.path.isdir(out_dir):
        try:
            entries = os.listdir(out_dir)
            foreign = foreign_entry(out_dir) if entries else None
        except OSError as e:
            raise OutputError(f"OUT_DIR {shown} cannot be read ({e.strerror or e}): choose "
                              "another directory") from None
        if entries and not overwrite:
            raise OutputError(f"OUT_DIR {shown} exists and is not empty: choose a new or empty "
                              "directory (--overwrite replaces only a previous svgd-rewrite "
                              "output)")
        if foreign is not None:
            raise _refusal(shown, foreign)
    return out_dir


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def recover(out_dir: str) -> None:
    """Finish what a killed run left beside ``out_dir``: its previous output moved aside comes
    back when OUT_DIR is missing (and is deleted when the new one is in place); staging
    directories of dead processes are removed."""
    real = os.path.realpath(out_dir)
    parent, base = os.path.dirname(real), os.path.basename(real) or "out"
    try:
        entries = sorted(os.listdir(parent))
    except OSError:
        return
    for entry in entries:
        m = _STAGING.match(entry)
        if not m or m.group("name") != base or _alive(int(m.group("pid"))):
            continue
        path = os.path.join(parent, entry)
        if m.group("kind") == "old" and not os.path.lexists(real):
            with contextlib.suppress(OSError):
                _fs.rename(path, real)  # the complete previous output, back in place
                continue
        if m.group("kind") == "old" and foreign_entry(path) is not None:
            continue  # not only the tool's files: leave it for the user
        _fs.rmtree(path)


def _commit(tmp: str, real: str, shown: str, overwrite: bool, parent: str, base: str) -> None:
    """Put the staged output in place: one rename for a new or empty OUT_DIR; for a previous
    output, move it aside, rename the new one in, then delete the old one."""
    try:
        _fs.rename(tmp, real)  # succeeds on a missing or empty directory
        return
    except OSError as e:
        if e.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR, errno.ENOTDIR):
            raise
    foreign = foreign_entry(real) if os.path.isdir(real) else os.path.basename(real)
    if not overwrite:
        raise OutputError(f"OUT_DIR {shown} was written by another process while this one was "
                          "writing: choose another directory")
    if foreign is not None:
        raise _refusal(shown, foreign)
    old = os.path.join(parent, f".{base}.svgd-old-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        _fs.rename(real, old)
    except OSError as e:
        if e.errno == errno.ENOENT:
            raise OutputError(f"OUT_DIR {shown} is being replaced by another process: choose "
                              "another directory") from None
        raise
    try:
        _fs.rename(tmp, real)
    except OSError:
        _fs.rename(old, real)  # put the previous output back
        raise OutputError(f"OUT_DIR {shown} was written by another process while this one was "
                          "writing: choose another directory") from None
    _fs.rmtree(old)


@contextlib.contextmanager
def staged_output(out_dir: str, inputs: list[str], overwrite: bool) -> Iterator[str]:
    """Yield a temporary directory next to ``out_dir``; on success list its files in a
    manifest and put it in place (``_commit``)."""
    out_dir = check_output_dir(out_dir, inputs, overwrite)
    shown = one_line(out_dir)
    real = os.path.realpath(out_dir)
    parent, base = os.path.dirname(real), os.path.basename(real) or "out"
    try:
        _fs.makedirs(parent)
        tmp = _fs.mkdtemp(prefix=f".{base}.svgd-tmp-{os.getpid()}-", dir=parent)
    except OSError as e:
        raise OutputError(f"cannot write next to OUT_DIR {shown}: {e.strerror or e}; choose "
                          "a writable location") from None
    try:
        try:
            yield tmp
            write_manifest(tmp)
        except OSError as e:  # a full disk, a permission lost while writing
            raise OutputError(f"cannot write OUT_DIR {shown}: {e.strerror or first_line(e)}"
                              ) from None
        if os.path.isdir(real):  # an existing directory keeps its permissions
            mode = os.stat(real).st_mode & 0o7777
        else:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o777 & ~umask
        _fs.chmod(tmp, mode)
        _commit(tmp, real, shown, overwrite, parent, base)
    except OSError as e:
        _fs.rmtree(tmp)
        raise OutputError(f"cannot write OUT_DIR {shown}: {e.strerror or e}") from None
    except BaseException:
        _fs.rmtree(tmp)
        raise
