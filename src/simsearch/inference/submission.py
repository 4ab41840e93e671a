"""Submission and ground-truth files: atomic, deterministic writing; strict reading; checks.

Formats (chosen by extension):

- ``.json``: ``{"query": ["gallery", ...], ...}``, keys sorted, 2-space indent, UTF-8, final
  newline -- identical input gives identical bytes.
- ``.csv``: header ``query,ranked_gallery`` (ground truth: ``query,<any name>``), one row per
  query, gallery names separated by single spaces (so names may not contain whitespace).
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from simsearch.utils.errors import InputFileError, reading
from simsearch.utils.fs import write_bytes_atomic, write_json_atomic

__all__ = [
    "SubmissionError",
    "assert_valid_submission",
    "gallery_names_from_dir",
    "read_ground_truth",
    "read_submission",
    "submission_format",
    "validate_submission",
    "write_submission",
]

CSV_HEADER = ("query", "ranked_gallery")
FORMATS = ("json", "csv")


class SubmissionError(ValueError):
    """A submission failed validation; ``errors`` lists every problem found."""

    def __init__(self, errors: Sequence[str]) -> None:
        self.errors = list(errors)
        shown = "\n".join(f"  - {e}" for e in self.errors[:50])
        more = f"\n  ... and {len(self.errors) - 50} more" if len(self.errors) > 50 else ""
        super().__init__(f"invalid submission ({len(self.errors)} problems):\n{shown}{more}")


def _check_rankings(rankings: Mapping[str, Sequence[str]], source: str) -> None:
    """Every key a string, every value a list of strings; errors name the query."""
    if not isinstance(rankings, Mapping):
        raise ValueError(f"{source}: expected a mapping query -> list of gallery names, "
                         f"got {type(rankings).__name__}")
    for query, ranked in rankings.items():
        if not isinstance(query, str) or not query:
            raise ValueError(f"{source}: query names must be non-empty strings, got {query!r}")
        if isinstance(ranked, (str, bytes)) or not isinstance(ranked, Sequence):
            raise ValueError(f"{source}: query {query!r}: expected a list of gallery names, "
                             f"got {type(ranked).__name__}")
        bad = [name for name in ranked if not isinstance(name, str) or not name]
        if bad:
            raise ValueError(f"{source}: query {query!r}: gallery names must be non-empty "
                             f"strings, got {bad[0]!r}")


def submission_format(path: str | os.PathLike, requested: str | None = None, key: str = "infer.format") -> str:
    """The format of the submission file ``path``, from its extension (.json or .csv).

    ``requested`` is a format the user asked for explicitly (``key``): it must agree with the
    extension, else both are named; an unknown extension is refused.
    """
    suffix = Path(path).suffix.lower()
    fmt = suffix[1:]
    if fmt not in FORMATS:
        raise ValueError(f"{path}: unknown submission extension {suffix or '(none)'!r}; a submission is "
                         ".json or .csv (the format follows the extension)")
    if requested is not None and requested != fmt:
        raise ValueError(f"{path}: the extension {suffix} says {fmt}, but {key}={requested}; drop {key} "
                         f"or name the file .{requested}")
    return fmt


def write_submission(
    path: str | os.PathLike,
    rankings: Mapping[str, Sequence[str]],
    fmt: str = "json",
    force: bool = False,
) -> Path:
    """Write ``rankings`` ({query: gallery names best first}) as JSON or CSV, atomically.

    Refuses to overwrite an existing file unless ``force``. Rows are sorted by query, so
    identical input gives byte-identical files.
    """
    _check_rankings(rankings, "rankings")
    if fmt == "json":
        return write_json_atomic(path, {q: list(r) for q, r in rankings.items()}, force)
    if fmt != "csv":
        raise ValueError(f"fmt must be 'json' or 'csv', got {fmt!r}")
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    for query in sorted(rankings):
        spaced = [name for name in rankings[query] if any(c.isspace() for c in name)]
        if spaced:
            raise ValueError(f"query {query!r}: gallery name {spaced[0]!r} contains whitespace, "
                             "which the space-separated CSV format cannot hold; use fmt='json'")
        writer.writerow([query, " ".join(rankings[query])])
    return write_bytes_atomic(path, buf.getvalue().encode("utf-8"), force)


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"query {key!r} appears twice")
        out[key] = value
    return out


def _read_json(path: Path) -> dict[str, list[str]]:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: malformed JSON at line {exc.lineno} column {exc.colno}: "
                         f"{exc.msg}") from exc
    except ValueError as exc:  # from _no_duplicate_keys
        raise ValueError(f"{path}: {exc}") from exc
    _check_rankings(obj, str(path))
    return {q: list(r) for q, r in obj.items()}


def _read_csv(path: Path, second_column: str | None) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        expected = f"query,{second_column or '<column>'}"
        if header is None or len(header) != 2 or header[0] != "query" or (
            second_column is not None and header[1] != second_column
        ):
            raise ValueError(f"{path}: line 1: expected header {expected!r}, got {header!r}")
        for row in reader:
            line = reader.line_num
            if not row:
                continue
            if len(row) != 2:
                raise ValueError(f"{path}: line {line}: expected 2 fields, got {len(row)}")
            query, names = row[0].strip(), row[1].split()
            if not query:
                raise ValueError(f"{path}: line {line}: empty query name")
            if query in out:
                raise ValueError(f"{path}: line {line}: query {query!r} appears twice")
            out[query] = names
    return out


def _read_by_extension(path: str | os.PathLike, csv_second: str | None) -> dict[str, list[str]]:
    p = Path(path)
    if p.is_dir():
        raise InputFileError(p, "is a folder; expected a .json or .csv file")
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such file")
    suffix = p.suffix.lower()
    if suffix not in (".json", ".csv"):
        raise ValueError(f"{p}: unknown format {suffix!r}; expected .json or .csv")
    # invalid UTF-8, a NUL byte, no permission: errors that would not say which file
    with reading(p, f"a UTF-8 {suffix[1:].upper()} file", "save it as UTF-8 text",
                 only=(UnicodeDecodeError, csv.Error)):
        return _read_json(p) if suffix == ".json" else _read_csv(p, csv_second)


def read_submission(path: str | os.PathLike) -> dict[str, list[str]]:
    """Read a submission ({query: ranked gallery names}); the format follows the extension."""
    return _read_by_extension(path, CSV_HEADER[1])


def read_ground_truth(path: str | os.PathLike) -> dict[str, list[str]]:
    """Read ground truth ({query: relevant gallery names}) from .json or .csv
    (header ``query,<any name>``, relevant names space-separated)."""
    return _read_by_extension(path, None)


def gallery_names_from_dir(directory: str | os.PathLike) -> set[str]:
    """Names a submission may use for the files under ``directory`` (recursive, hidden
    files skipped): each relative POSIX path, with and without its extension."""
    root = Path(directory)
    if not root.is_dir():
        raise ValueError(f"{root}: the gallery directory does not exist or is not a directory")
    names: set[str] = set()
    for file in root.rglob("*"):
        rel = file.relative_to(root)
        if file.is_file() and not any(part.startswith(".") for part in rel.parts):
            names.add(rel.as_posix())
            names.add(rel.with_suffix("").as_posix())
    return names


def validate_submission(
    submission: Mapping[str, Sequence[str]],
    ground_truth: Mapping[str, Sequence[str]],
    gallery_names: Iterable[str] | None = None,
) -> list[str]:
    """Every problem with ``submission``, one message per query and problem ([] = valid).

    Checks: ground-truth queries missing, queries not in the ground truth, names repeated
    within a row and -- only when ``gallery_names`` is given -- names not in the gallery.
    (The ground truth cannot stand in for the gallery: items relevant to no query would be
    flagged.) An empty row is allowed: that query simply scores 0.
    """
    errors = [f"query {q!r}: missing from the submission"
              for q in sorted(set(ground_truth) - set(submission))]
    errors += [f"query {q!r}: not a query of the ground truth"
               for q in sorted(set(submission) - set(ground_truth))]
    known = None if gallery_names is None else set(gallery_names)
    for query in sorted(submission):
        ranked = submission[query]
        repeated = sorted(name for name, count in Counter(ranked).items() if count > 1)
        if repeated:
            errors.append(f"query {query!r}: repeated gallery names {_preview(repeated)}")
        if known is not None:
            unknown = sorted(set(ranked) - known)
            if unknown:
                errors.append(f"query {query!r}: {len(unknown)} names not in the gallery: "
                              f"{_preview(unknown)}")
    return errors


def _preview(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def assert_valid_submission(
    submission: Mapping[str, Sequence[str]],
    ground_truth: Mapping[str, Sequence[str]],
    gallery_names: Iterable[str] | None = None,
) -> None:
    """Raise :class:`SubmissionError` listing every problem :func:`validate_submission` finds."""
    errors = validate_submission(submission, ground_truth, gallery_names)
    if errors:
        raise SubmissionError(errors)
