"""The one way simsearch writes files and folders: whole or not at all, never over a user's file by accident.

Every output (submissions, configs, caches, checkpoints, exports, indexes, built competitions)
goes through these helpers, so a crash or a full disk leaves either the old output or the new one.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from simsearch.utils.errors import OutputPathError

__all__ = ["atomic_file", "atomic_folder", "check_writable", "replace_file", "submission_meta_path",
           "swap_into_place", "write_bytes_atomic", "write_json_atomic", "write_text_atomic"]


def _refuse_existing(target: Path, force: bool) -> None:
    if (target.exists() or target.is_symlink()) and not force:
        raise FileExistsError(f"{target} already exists; pass --force (force=True) to overwrite")


@contextmanager
def atomic_file(path: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """Yield a temp path beside ``path``; when the block succeeds the file is fsynced and renamed onto
    ``path`` (readers never see a partial file), when it fails the temp file is removed.

    Refuses to replace an existing file unless ``force``. The file gets the usual permissions
    (0666 minus the umask), not mkstemp's 0600.
    """
    target = Path(path)
    _refuse_existing(target, force)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    tmp = Path(name)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        os.close(fd)
        yield tmp
        replace_file(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def replace_file(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """fsync the finished file ``src``, then rename it onto ``dst`` (same file system)."""
    with open(src, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(src, dst)


def write_bytes_atomic(path: str | os.PathLike, data: bytes, force: bool = False) -> Path:
    """Write ``data`` to ``path`` through :func:`atomic_file`."""
    with atomic_file(path, force) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str, force: bool = False) -> Path:
    """UTF-8 text through :func:`atomic_file`."""
    return write_bytes_atomic(path, text.encode("utf-8"), force)


def write_json_atomic(path: str | os.PathLike, obj: Any, force: bool = False) -> Path:
    """``obj`` as deterministic JSON (sorted keys, indent 2, final newline), atomically."""
    return write_text_atomic(path, json.dumps(obj, sort_keys=True, indent=2, ensure_ascii=False) + "\n", force)


def swap_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished build ``tmp`` onto ``out``; an old ``out`` is moved aside first, then deleted.

    ``tmp`` must be a sibling of ``out`` so that the renames stay on one file system.
    """
    old = None
    if out.exists() or out.is_symlink():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        out.rename(old / out.name)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old)


@contextmanager
def atomic_folder(out: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temp folder beside ``out``; when the block succeeds it replaces ``out``
    (:func:`swap_into_place`), when it fails it is deleted and ``out`` is left as it was."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        yield tmp
        tmp.chmod(0o777 & ~_umask())
        swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def check_writable(path: str | os.PathLike, folder: bool = False, what: str = "the output",
                   force: bool | None = None) -> Path:
    """Refuse, before any work, an output that could not be written later; returns ``path`` as a Path.

    ``path`` (a file, or a folder when ``folder``) may exist or not; raises :class:`OutputPathError`
    naming the path at fault when it is a folder where a file goes (or a file where a folder goes),
    when it or the folder it would be made in is not writable, or when a part of the way to it is a
    file. With ``force`` given, an existing output is also refused unless ``force`` (None: the
    caller decides, e.g. an index folder that may be replaced only when it is one).
    """
    target = Path(path)
    kind = "folder" if folder else "file"
    if target.exists():
        if target.is_dir() != folder:
            actual = "folder" if target.is_dir() else "file"
            raise OutputPathError(target, f"is a {actual}, but {what} must be a {kind}",
                                  "choose another path")
        if not os.access(target, os.W_OK | (os.X_OK if folder else 0)):
            raise OutputPathError(target, f"is not writable, so {what} cannot be written there",
                                  "fix its permissions or choose another path")
    parent = target.absolute().parent
    while not parent.exists():  # the nearest folder that exists is where the rest would be made
        parent = parent.parent
    if not parent.is_dir():
        raise OutputPathError(parent, f"is a file, so {what} {target} cannot be made under it",
                              "choose another path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputPathError(parent, f"is not writable, so {what} {target} cannot be made there",
                              "fix its permissions or choose another path")
    if force is not None:
        _refuse_existing(target, force)
    return target


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def submission_meta_path(submission: str | os.PathLike) -> Path:
    """The meta file written beside a submission: ``NAME.json`` -> ``NAME.meta.json``."""
    out = Path(submission)
    return out.with_name(out.stem + ".meta.json")
