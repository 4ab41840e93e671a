"""What every command does with bad input: one line ``error: <file or key>: <what is wrong>`` and exit
status 2, not a traceback (``--debug`` or ``SIMSEARCH_DEBUG=1`` shows the traceback instead).

The errors that count as the user's to fix are :data:`USER_ERRORS`: bad values (``ValueError``, of
which ``ConfigError`` and :class:`InputFileError` are kinds) and the file-system errors that come
from a path the user gave: missing, already there, a folder where a file belongs or the other way
round, no permission. Other ``OSError``\\s (a full disk, an I/O error) and everything else are not:
they keep their traceback.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["USER_ERRORS", "InputFileError", "OutputPathError", "PathError", "add_debug_flag", "describe",
           "reading", "user_error"]

# Missing or existing files, wrong kinds of path, no permission and bad values: the user's to fix.
USER_ERRORS = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError,
               ValueError)


class PathError(ValueError):
    """A file or folder the user named cannot be used: ``path: problem; fix``."""

    def __init__(self, path: str | os.PathLike, problem: str, fix: str = "") -> None:
        self.path, self.problem, self.fix = Path(path), problem, fix
        super().__init__(f"{self.path}: {problem}" + (f"; {fix}" if fix else ""))


class InputFileError(PathError):
    """A file read as input (checkpoint, index, submission, leaderboard, ...) is not what it should
    have been; the message names it, says what it should be and how to rebuild it."""


class OutputPathError(PathError):
    """An output path that could not be written (a folder where a file goes, a file where a folder
    goes, no permission); raised before any work is done."""


def describe(exc: BaseException) -> str:
    """The one-line text of a user error; an ``OSError`` with a file name reads ``path: reason``."""
    if isinstance(exc, OSError) and exc.filename is not None:
        where = str(exc.filename) + (f" -> {exc.filename2}" if exc.filename2 is not None else "")
        return f"{where}: {exc.strerror or exc}"
    return str(exc)


def _os_problem(exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError):
        return "does not exist"
    if isinstance(exc, IsADirectoryError):
        return "is a folder, not a file"
    if isinstance(exc, NotADirectoryError):
        return "a part of this path is a file, not a folder"
    if isinstance(exc, PermissionError):
        return "permission denied"
    return exc.strerror or str(exc)


@contextmanager
def reading(path: str | os.PathLike, expected: str, fix: str = "", detail: bool = True,
            only: tuple[type[BaseException], ...] = (Exception,)) -> Iterator[None]:
    """Turn a failure inside the block, which reads ``path``, into an error naming ``path``.

    A missing file stays a ``FileNotFoundError``, a folder or a refused permission becomes an
    ``InputFileError``, both with the path and ``fix``; an exception of the types ``only`` (default:
    anything a parser raises for a corrupt or truncated file) becomes
    ``InputFileError("<path>: not <expected> (<reason>); <fix>")``, the reason left out when
    ``detail`` is false (a message that would give bad advice). Other exceptions pass unchanged.
    """
    try:
        yield
    except (PathError, MemoryError):
        raise
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{path}: does not exist" + (f"; {fix}" if fix else "")) from exc
    except (IsADirectoryError, NotADirectoryError, PermissionError) as exc:
        raise InputFileError(path, _os_problem(exc), fix) from exc
    except only as exc:  # each parser has its own error types: safetensors, torch, faiss, json, csv, yaml
        reason = (str(exc).strip().splitlines() or [""])[0][:300]
        why = f"{type(exc).__name__}: {reason}" if detail and reason else type(exc).__name__
        raise InputFileError(path, f"not {expected} ({why})", fix) from exc


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    """The ``--debug`` option every command has: show the traceback of an error instead of one line."""
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error (also: SIMSEARCH_DEBUG=1)")


def _debug_env() -> bool:
    return os.environ.get("SIMSEARCH_DEBUG", "").strip().lower() not in ("", "0", "false", "no")


def user_error(exc: BaseException, debug: bool = False) -> int:
    """Print ``error: ...`` instead of a traceback and return 2 (``debug`` or SIMSEARCH_DEBUG=1 re-raise it)."""
    if debug or _debug_env():
        raise exc
    print(f"error: {describe(exc)}", file=sys.stderr)
    return 2
