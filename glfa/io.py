"""Atomic files and folders: the one place where glfa renames things into place.

A reader of any glfa output sees the old version, none, or the new one, never a half-written
file or folder:

- :func:`atomic_path`, :func:`open_atomic`, :func:`write_bytes_atomic` and
  :func:`write_json_atomic` write a temporary sibling, fsync it and rename it onto the target;
- :func:`install_dir` builds a folder in a temporary sibling and swaps it in whole
  (:func:`replace_dir` is the swap); :func:`remove_dir` deletes one without a half-deleted state;
- :func:`check_output` checks, before any long work starts, that an output location can be
  written (a folder where a folder is expected, a writable parent);
- :func:`remove_stale_temporaries` deletes the temporaries of killed processes and leaves those
  of living ones alone, so two runs writing beside each other never delete each other's work.

Every temporary is named ``.<target name>.<kind>-<pid>-<token>``: the process id says who owns it.
A failed write removes its temporary and raises :class:`~glfa.errors.OutputError` naming the target.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Literal

from glfa.errors import OutputError

__all__ = ["atomic_path", "open_atomic", "write_bytes_atomic", "write_json_atomic", "install_dir", "replace_dir",
           "remove_dir", "check_output", "remove_stale_temporaries", "temporary_name", "fsync_dir"]

# .<name>.<kind>-<pid>-<token>: what temporary_name makes; kind "tmp" (being built) or "old" (being replaced);
# "partial" and a missing token: the names of glfa versions before this module
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?:tmp|old|partial)-(?P<pid>\d+)(?:-\w+)?$")


def temporary_name(target: Path, kind: Literal["tmp", "old"] = "tmp") -> Path:
    """A fresh sibling path of ``target`` owned by this process (nothing is created)."""
    return target.with_name(f".{target.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}")


def _alive(pid: int) -> bool:
    """Whether a process with this id exists (one we may not signal counts as alive)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(target: str | Path) -> list[Path]:
    """Delete the temporaries beside ``target`` whose owner process is dead; returns what was removed.

    A temporary of a living process (another run writing the same output right now) is kept:
    removing it would kill that run's write. ``target``'s name may be a glob pattern
    (``root / "checkpoint-*"``) to cover every target of that form in its folder.
    """
    target = Path(target)
    removed = []
    if not target.parent.is_dir():
        return removed
    for path in target.parent.iterdir():
        match = _TEMPORARY.match(path.name)
        if not match or not fnmatch.fnmatchcase(match.group("name"), target.name) or _alive(int(match.group("pid"))):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def _nearest_existing(path: Path) -> Path:
    """``path`` itself or its closest existing ancestor."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return probe


def check_output(path: str | Path, kind: Literal["file", "dir"], *, field: str | None = None) -> Path:
    """Check that ``path`` can be written as a ``kind`` before any work starts; returns it.

    A file may replace an existing file, a folder an existing folder; the other way round is an
    error. The folder that will receive the output (the closest one that exists) must be a folder
    this process can create files in: that is tried, not guessed from permission bits, so a
    read-only mount is caught too.

    Raises
    ------
    OutputError
        Naming ``path`` (and ``field``, the option that gave it) and what was expected.
    """
    path = Path(path)
    if kind == "file" and path.is_dir():
        raise OutputError("is a folder; expected a file to write (or a path that does not exist yet)",
                          path=path, field=field)
    if kind == "dir" and path.exists() and not path.is_dir():
        raise OutputError("is a file; expected a folder to write into (or a path that does not exist yet)",
                          path=path, field=field)
    existing = _nearest_existing(path if kind == "dir" else path.parent)
    if not existing.is_dir():
        raise OutputError(f"cannot be created: {existing} is a file, not a folder", path=path, field=field)
    try:
        fd, probe = tempfile.mkstemp(prefix=".glfa-write-check-", dir=existing)
    except OSError as exc:
        raise OutputError(f"cannot be written: {existing} does not accept new files ({exc.strerror})",
                          path=path, field=field) from None
    os.close(fd)
    os.unlink(probe)
    return path


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries (renames, new files) to disk where the OS allows it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """A temporary sibling file name to write by name; the file replaces ``path`` when the block ends.

    ``suffix`` ends the temporary's name, for writers that choose the format by the extension.
    On failure the temporary is removed and :class:`OutputError` names ``path``; an exception
    inside the block leaves ``path`` as it was.
    """
    path = Path(path)
    tmp = temporary_name(path)
    tmp = tmp.with_name(tmp.name + suffix)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise OutputError(f"cannot be written ({exc.strerror or exc})", path=path) from None
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


@contextmanager
def open_atomic(path: str | Path) -> Iterator[BinaryIO]:
    """A binary file handle whose content replaces ``path`` when the block ends (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        yield fh


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`open_atomic`)."""
    with open_atomic(path) as fh:
        fh.write(data)
    return Path(path)


def write_json_atomic(path: str | Path, data: Any) -> Path:
    """Write ``data`` as indented JSON to ``path`` atomically."""
    return write_bytes_atomic(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def replace_dir(src: Path, dst: Path) -> None:
    """Move the complete folder ``src`` to ``dst``: readers see the old folder, none, or the new one."""
    if dst.exists() and not dst.is_dir():
        raise OutputError("exists and is not a folder; will not overwrite it", path=dst)
    try:
        if dst.exists():
            old = temporary_name(dst, "old")
            os.replace(dst, old)
            os.replace(src, dst)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(src, dst)
    except OSError as exc:
        raise OutputError(f"cannot be replaced ({exc.strerror or exc})", path=dst) from None
    fsync_dir(dst.parent)


def remove_dir(path: str | Path) -> None:
    """Delete a folder so that no reader sees it half-deleted: renamed aside first, then removed."""
    path = Path(path)
    aside = temporary_name(path, "old")
    try:
        os.replace(path, aside)
    except OSError as exc:
        raise OutputError(f"cannot be removed ({exc.strerror or exc})", path=path) from None
    shutil.rmtree(aside, ignore_errors=True)


@contextmanager
def install_dir(target: str | Path) -> Iterator[Path]:
    """Build a folder in a temporary sibling of ``target`` and swap it in whole when the block ends.

    Stale temporaries of ``target`` left by killed processes are removed first; an exception
    inside the block removes this one and leaves ``target`` as it was.

    Examples
    --------
    >>> with install_dir(run / "model") as tmp:  # doctest: +SKIP
    ...     write_json_atomic(tmp / "model.json", info)
    """
    target = Path(target)
    check_output(target, "dir")
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target)
    tmp = temporary_name(target)
    tmp.mkdir()
    try:
        yield tmp
        replace_dir(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
