"""Safe output directories: staged in a temporary sibling, committed by renames, replaced only
when every file in them is the tool's own; nothing is deleted that the tool cannot prove it
wrote.

The rules ("trust"):

- nothing is written into the input; OUT_DIR is resolved once to an absolute path;
- the tool writes into a new or empty directory, or replaces (``overwrite``) a previous
  output of its own: a directory whose every file is listed, with its size and SHA-256, in
  the ``svgd_manifest.json`` the tool wrote there. Any other entry (a user's notes, a report
  copied in by hand, a FIFO, a device, a symlink) makes it refuse, naming that entry; it never
  deletes anything else;
- a failure at any point leaves OUT_DIR as it was;
- only regular files are read, never through a symlink, and never a FIFO or a device (which
  could block forever or never end); a manifest is read only up to 64 MiB and must have the
  shape the tool writes (a dict of file records, a list of directory names), else it is not
  the tool's: every bad manifest is an ``OutputError`` (one line), never another exception.

The commit is a sequence of renames, each atomic: the new output is written completely into
``.NAME.svgd-tmp-PID-TOKEN`` beside OUT_DIR, which carries from its creation a marker file
(``.svgd-staging``: the tool, the PID and the TOKEN of that name) and at the end its manifest;
a new or empty OUT_DIR is then claimed by one ``rename``; a previous output is moved aside to
``.NAME.svgd-old-PID-*`` and the new one renamed into place; only then are the marker (from
the new output) and the old output (its manifest last) deleted. A process killed at any point
leaves either the complete old output or the complete new one in OUT_DIR, or — between the
two renames — OUT_DIR missing and the complete old output in the ``svgd-old`` sibling. The
next run on that OUT_DIR first settles what a dead process (by its PID; a PID that cannot be
one is a dead process's) left beside it:

- a staging directory is deleted only when it carries its valid marker (the marker last, so
  that a kill midway leaves it recognisable); an empty one is removed (``rmdir`` deletes
  nothing); a look-alike holding anything without the marker is never touched;
- an aside is restored or kept, never deleted, unless it is provably the tool's (its manifest
  verifies) and the complete new output (one whose manifest verifies) is in OUT_DIR: it is
  moved back when OUT_DIR is missing or an empty directory, and kept (left for the user) when
  OUT_DIR holds anything else.

SIGINT, SIGTERM and SIGHUP are held back (in the main thread) while the staging directory is
created, while the renames of the commit and the deletions after them run, and while a
staging directory is deleted, and handled right after: a signal ends a run between two
consistent states. An interrupt leaving ``staged_output`` carries ``output_state``: one line
saying what OUT_DIR holds. Two writers racing for one OUT_DIR: exactly one wins. The library
never prints.
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
import signal
import stat
import tempfile
import threading
from typing import Iterator

from .errors import OutputError, first_line, one_line

REPORT_FILE = "svgd_report.json"
MANIFEST_FILE = "svgd_manifest.json"
STAGING_MARKER = ".svgd-staging"
MANIFEST_LIMIT = 64 << 20  # bytes read of a manifest, at most
_MARKER_LIMIT = 4096
_PID_MAX = 1 << 22  # Linux's largest pid_max: a larger number is no process's
_STAGING = re.compile(r"\.(?P<name>.+)\.svgd-(?P<kind>tmp|old)-(?P<pid>[0-9]+)-(?P<token>.*)",
                      re.ASCII | re.DOTALL)
_HELD = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP")
              if hasattr(signal, name))


class FileSystem:
    """The filesystem calls of the commit path, in one object so that a test can stop the
    process before any one of them (``tests/test_output_dir.py``)."""

    def mkdtemp(self, prefix: str, dir: str) -> str:
        return tempfile.mkdtemp(prefix=prefix, dir=dir)

    def makedirs(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)

    def rename(self, src: str, dst: str) -> None:
        os.rename(src, dst)

    def rmtree(self, path: str, last: tuple[str, ...] = ()) -> None:
        """Delete directory ``path``, its entries named in ``last`` (its manifest, its marker)
        after all the others, so that a process killed midway leaves a directory the next run
        still recognises as the tool's."""
        if os.path.islink(path):
            return
        try:
            names = os.listdir(path)
        except OSError:
            return
        for name in sorted(names, key=lambda n: n in last):
            full = os.path.join(path, name)
            if os.path.isdir(full) and not os.path.islink(full):
                shutil.rmtree(full, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    os.unlink(full)
        with contextlib.suppress(OSError):
            os.rmdir(path)

    def rmdir(self, path: str) -> None:
        os.rmdir(path)  # an empty directory only

    def unlink(self, path: str) -> None:
        os.unlink(path)

    def chmod(self, path: str, mode: int) -> None:
        os.chmod(path, mode)

    def write_text(self, path: str, text: str) -> None:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


_fs = FileSystem()


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP recorded, not handled, while the block runs; handled (by
    the handlers in place before, the default one included) right after it. Python runs
    signal handlers in the main thread only: another thread is never interrupted."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {}
    try:
        for signum in _HELD:
            handler = signal.getsignal(signum)
            if handler is None or handler == signal.SIG_IGN:
                continue  # installed outside Python, or ignored: left as it is
            previous[signum] = signal.signal(signum, lambda n, _frame: caught.append(n))
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum in dict.fromkeys(caught):
            signal.raise_signal(signum)  # as if it came now


def resolve_output_dir(out_dir: str | os.PathLike | None) -> str:
    """OUT_DIR as an absolute path; an empty or blank path is refused."""
    if out_dir is None or not str(out_dir).strip():
        raise OutputError("OUT_DIR is empty: give the directory to write, e.g. ./model_svgd")
    return os.path.abspath(os.fspath(out_dir))


def _inside(path: str, parent: str) -> bool:
    path, parent = os.path.realpath(path), os.path.realpath(parent)
    return path == parent or path.startswith(parent.rstrip(os.sep) + os.sep)


class _NotRegular(ValueError):
    """Not a regular file, or larger than the tool reads."""


def _open_regular(path: str) -> int:
    """A descriptor of the regular file ``path``, opened without following a symlink and
    without blocking (a FIFO, a device or a symlink is refused before it is opened)."""
    if not stat.S_ISREG(os.lstat(path).st_mode):
        raise _NotRegular(path)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)
                 | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    if not stat.S_ISREG(os.fstat(fd).st_mode):  # replaced between the two looks
        os.close(fd)
        raise _NotRegular(path)
    return fd


def _read_regular(path: str, limit: int) -> bytes:
    """The bytes of the regular file ``path``, at most ``limit`` of them (more: _NotRegular)."""
    fd = _open_regular(path)
    try:
        if os.fstat(fd).st_size > limit:
            raise _NotRegular(path)
        chunks, total = [], 0
        while chunk := os.read(fd, min(1 << 20, limit + 1 - total)):
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                raise _NotRegular(path)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _digest(path: str) -> str:
    fd = _open_regular(path)
    try:
        h = hashlib.sha256()
        while chunk := os.read(fd, 1 << 20):
            h.update(chunk)
        return h.hexdigest()
    finally:
        os.close(fd)


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
    ``root/svgd_manifest.json`` (the staging marker is not listed: it is removed once the
    output is in place)."""
    files = {}
    for rel in _files(root):
        if rel in (MANIFEST_FILE, STAGING_MARKER):
            continue
        full = os.path.join(root, rel)
        if not stat.S_ISREG(os.lstat(full).st_mode):
            raise OSError(errno.EINVAL, f"{one_line(rel)} is not a regular file")
        files[rel] = {"size": os.lstat(full).st_size, "sha256": _digest(full)}
    dirs = sorted(os.path.relpath(os.path.join(d, n), root).replace(os.sep, "/")
                  for d, names, _ in os.walk(root) for n in names)
    manifest = {"tool": "svgd-rewrite", "format": 1, "files": files, "directories": dirs}
    _fs.write_text(os.path.join(root, MANIFEST_FILE), json.dumps(manifest, indent=1,
                                                                 sort_keys=True))
    return manifest


def _json(path: str, limit: int):
    """The JSON value in regular file ``path``; ValueError for anything else (too large, too
    deep, not UTF-8, not JSON, not a regular file); FileNotFoundError when there is none."""
    data = _read_regular(path, limit)
    try:
        return json.loads(data.decode("utf-8"))
    except RecursionError:  # nested too deep for the parser
        raise ValueError(f"{path} is nested too deep") from None


def read_manifest(path: str) -> tuple[dict, set[str]]:
    """The files (name → ``{"size", "sha256"}``) and directories listed in directory
    ``path``'s manifest. FileNotFoundError when there is none; ValueError when it is not one
    the tool writes (not a regular file, over 64 MiB, too deep, another shape)."""
    try:
        manifest = _json(os.path.join(path, MANIFEST_FILE), MANIFEST_LIMIT)
    except FileNotFoundError:
        raise
    except OSError as e:  # unreadable: not known to be the tool's
        raise ValueError(str(e)) from None
    if not isinstance(manifest, dict) or manifest.get("tool") != "svgd-rewrite":
        raise ValueError("not svgd-rewrite's manifest")
    files, dirs = manifest.get("files"), manifest.get("directories", [])
    if not (isinstance(files, dict) and all(
            isinstance(record, dict) and type(record.get("size")) is int
            and isinstance(record.get("sha256"), str) for record in files.values())):
        raise ValueError("the manifest's files are not records of size and sha256")
    if not (isinstance(dirs, list) and all(isinstance(d, str) for d in dirs)):
        raise ValueError("the manifest's directories are not a list of names")
    return files, set(dirs)


def _marker(path: str) -> dict | None:
    """The staging marker in file ``path`` when it is one the tool writes, else None."""
    try:
        marker = _json(path, _MARKER_LIMIT)
    except (OSError, ValueError):
        return None
    if (isinstance(marker, dict) and marker.get("tool") == "svgd-rewrite"
            and type(marker.get("pid")) is int and isinstance(marker.get("token"), str)):
        return marker
    return None


def foreign_entry(path: str) -> str | None:
    """The first entry of directory ``path`` that is not svgd-rewrite's own output (not in
    its manifest, changed since, not a regular file), or None when every file is the tool's.
    A manifest the tool did not write (see ``read_manifest``) is itself the foreign entry."""
    try:
        listed, directories = read_manifest(path)
    except FileNotFoundError:
        entries = sorted(os.listdir(path))
        return entries[0] if entries else None
    except ValueError:
        return MANIFEST_FILE
    for rel in _files(path):
        if rel == MANIFEST_FILE:
            continue
        full = os.path.join(path, rel)
        if rel == STAGING_MARKER and _marker(full) is not None:
            continue  # a commit killed before it removed the marker from the new output
        record = listed.get(rel)
        if record is None:
            return rel
        st = os.lstat(full)
        if not stat.S_ISREG(st.st_mode) or st.st_size != record["size"]:
            return rel
        try:
            if _digest(full) != record["sha256"]:
                return rel
        except _NotRegular:
            return rel
    for dirpath, dirnames, _ in os.walk(path):  # directories a user added
        for d in dirnames:
            rel = os.path.relpath(os.path.join(dirpath, d), path).replace(os.sep, "/")
            if rel not in directories and not any(r.startswith(rel + "/") for r in listed):
                return rel
    return None


def _tool_output(path: str) -> bool:
    """Whether ``path`` is a directory (not a symlink) holding a manifest of the tool and
    nothing but the files it lists, unchanged: provably the tool's."""
    try:
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            return False
        read_manifest(path)
        return foreign_entry(path) is None
    except (OSError, ValueError):
        return False


def is_own_output(path: str) -> bool:
    """Whether ``path`` is a complete, unchanged output of the tool (its manifest verifies):
    the only kind of directory the tool ever replaces."""
    return _tool_output(path)


def _empty_dir(path: str) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode) and not os.listdir(path)
    except OSError:
        return False


def _refusal(shown: str, entry: str) -> OutputError:
    if entry == MANIFEST_FILE:
        return OutputError(
            f"OUT_DIR {shown} holds a {MANIFEST_FILE} that svgd-rewrite did not write (not a "
            "regular file, unreadable, over 64 MiB, or not the shape it writes): --overwrite "
            "replaces only the tool's own files; move it away or choose another directory")
    return OutputError(
        f"OUT_DIR {shown} holds {one_line(entry)!r}, which is not svgd-rewrite's own output "
        f"(not listed in its {MANIFEST_FILE}): --overwrite replaces only the tool's own "
        "files; move it away or choose another directory")


def check_output_dir(out_dir: str, inputs: list[str], overwrite: bool) -> str:
    """Refuse an OUT_DIR that is empty as a string, inside (or equal to) an input, holds an
    input, or is non-empty (unless ``overwrite`` and it holds only a previous svgd-rewrite
    output). Settles what a killed run left beside it first (``recover``). Returns OUT_DIR
    absolute."""
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
            if entries and not overwrite:
                raise OutputError(f"OUT_DIR {shown} exists and is not empty: choose a new or "
                                  "empty directory (--overwrite replaces only a previous "
                                  "svgd-rewrite output)")
            foreign = foreign_entry(out_dir) if entries else None
        except OSError as e:
            raise OutputError(f"OUT_DIR {shown} cannot be read ({e.strerror or e}): choose "
                              "another directory") from None
        if foreign is not None:
            raise _refusal(shown, foreign)
    return out_dir


def _pid(text: str) -> int | None:
    """The process id in a staging name; None for a number no process can have."""
    pid = int(text)
    return pid if 0 < pid <= _PID_MAX else None


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OverflowError, ValueError):
        return False
    except OSError:
        return True
    return True


def recover(out_dir: str) -> None:
    """Settle what killed runs (dead PIDs) left beside ``out_dir``: a staging directory with
    its valid marker is deleted (an empty one removed); an aside that is provably the tool's
    output comes back when OUT_DIR is missing or empty, is deleted when a complete output of
    the tool is in OUT_DIR, and is kept otherwise. Nothing else is touched."""
    real = os.path.realpath(out_dir)
    parent, base = os.path.dirname(real), os.path.basename(real) or "out"
    try:
        entries = sorted(os.listdir(parent))
    except OSError:
        return
    for entry in entries:
        m = _STAGING.fullmatch(entry)
        if not m or m.group("name") != base:
            continue
        pid = _pid(m.group("pid"))
        if _alive(pid):
            continue  # a running writer's
        path = os.path.join(parent, entry)
        try:
            if not stat.S_ISDIR(os.lstat(path).st_mode):
                continue
        except OSError:
            continue
        if m.group("kind") == "tmp":
            marker = _marker(os.path.join(path, STAGING_MARKER))
            with _signals_held(), contextlib.suppress(OSError):
                if marker and marker["pid"] == pid and marker["token"] == m.group("token"):
                    _fs.rmtree(path, last=(STAGING_MARKER,))
                else:  # not provably the tool's: removed only when empty
                    _fs.rmdir(path)
            continue
        if not _tool_output(path):
            continue  # not provably the tool's: kept as it is
        if not os.path.lexists(real) or _empty_dir(real):
            with _signals_held(), contextlib.suppress(OSError):
                _fs.rename(path, real)  # the complete previous output, back in place
        elif _tool_output(real):  # a complete new output is in place
            with _signals_held():
                _fs.rmtree(path, last=(MANIFEST_FILE, STAGING_MARKER))

def _make_staging(parent: str, base: str, shown: str) -> str:
    """A new staging directory beside OUT_DIR, carrying its marker."""
    prefix = f".{base}.svgd-tmp-{os.getpid()}-"
    try:
        _fs.makedirs(parent)
        tmp = _fs.mkdtemp(prefix=prefix, dir=parent)
    except OSError as e:
        raise OutputError(f"cannot write next to OUT_DIR {shown}: {e.strerror or e}; choose "
                          "a writable location") from None
    token = os.path.basename(tmp)[len(prefix):]
    try:
        _fs.write_text(os.path.join(tmp, STAGING_MARKER), json.dumps(
            {"tool": "svgd-rewrite", "pid": os.getpid(), "token": token}))
    except OSError as e:
        _fs.rmtree(tmp)
        raise OutputError(f"cannot write next to OUT_DIR {shown}: {e.strerror or e}; choose "
                          "a writable location") from None
    return tmp


def _drop_marker(real: str) -> None:
    with contextlib.suppress(OSError):
        _fs.unlink(os.path.join(real, STAGING_MARKER))


def _commit(tmp: str, real: str, shown: str, overwrite: bool, parent: str, base: str) -> None:
    """Put the staged output in place: one rename for a new or empty OUT_DIR; for a previous
    output, move it aside, rename the new one in, then delete the old one."""
    with _signals_held():
        try:
            _fs.rename(tmp, real)  # succeeds on a missing or empty directory
        except OSError as e:
            if e.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR, errno.ENOTDIR):
                raise
        else:
            _drop_marker(real)
            return
    foreign = foreign_entry(real) if os.path.isdir(real) else os.path.basename(real)
    if not overwrite:
        raise OutputError(f"OUT_DIR {shown} was written by another process while this one was "
                          "writing: choose another directory")
    if foreign is not None:
        raise _refusal(shown, foreign)
    old = os.path.join(parent, f".{base}.svgd-old-{os.getpid()}-{secrets.token_hex(4)}")
    with _signals_held():  # from here to the old output's deletion: no signal in between
        try:
            _fs.rename(real, old)
        except OSError as e:
            if e.errno == errno.ENOENT:
                raise OutputError(f"OUT_DIR {shown} is being replaced by another process: "
                                  "choose another directory") from None
            raise
        try:
            _fs.rename(tmp, real)
        except OSError:
            try:
                _fs.rename(old, real)  # put the previous output back
            except OSError:
                raise OutputError(f"OUT_DIR {shown} was taken by another process while this "
                                  f"one replaced it; its previous output is in {one_line(old)}"
                                  ) from None
            raise OutputError(f"OUT_DIR {shown} was written by another process while this one "
                              "was writing: choose another directory") from None
        _drop_marker(real)
        _fs.rmtree(old, last=(MANIFEST_FILE, STAGING_MARKER))

@contextlib.contextmanager
def staged_output(out_dir: str, inputs: list[str], overwrite: bool) -> Iterator[str]:
    """Yield a temporary directory next to ``out_dir``; on success list its files in a
    manifest and put it in place (``_commit``). An interrupt (KeyboardInterrupt or another
    BaseException that is not an Exception) leaving this block carries ``output_state``: one
    line saying what OUT_DIR holds."""
    out_dir = check_output_dir(out_dir, inputs, overwrite)
    shown = one_line(out_dir)
    real = os.path.realpath(out_dir)
    parent, base = os.path.dirname(real), os.path.basename(real) or "out"
    tmp = None
    try:
        with _signals_held():
            tmp = _make_staging(parent, base, shown)
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
    except BaseException as e:
        committed = tmp is not None and not os.path.lexists(tmp)  # renamed into place
        if tmp is not None and not committed:
            with _signals_held():
                _fs.rmtree(tmp, last=(STAGING_MARKER,))
        if isinstance(e, OSError):
            raise OutputError(f"cannot write OUT_DIR {shown}: {e.strerror or e}") from None
        if not isinstance(e, Exception):
            e.output_state = (f"OUT_DIR {shown} holds the complete new output" if committed
                              else f"nothing was written (OUT_DIR {shown} is as it was)")
        raise
