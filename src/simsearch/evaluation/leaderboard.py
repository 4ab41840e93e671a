"""A CSV leaderboard of scored submissions and its text rendering.

One row per scoring run; columns are the union of every row's keys (a run that reports a
new metric widens the file, older rows get empty cells). The file is always rewritten
through a temp file + rename, so a crash never leaves a half-written leaderboard.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Mapping
from pathlib import Path

from simsearch.utils.errors import InputFileError, reading
from simsearch.utils.fs import check_writable, write_bytes_atomic

__all__ = ["append_row", "check_leaderboard", "format_leaderboard", "read_leaderboard"]

NEW_MARK = "<- new"


def read_leaderboard(csv_path: str | os.PathLike) -> tuple[list[str], list[dict[str, str]]]:
    """(header, rows) of the leaderboard; ([], []) when the file does not exist yet."""
    path = Path(csv_path)
    if not path.exists():
        return [], []
    if path.is_dir():
        raise InputFileError(path, "is a folder; the leaderboard is a CSV file", "pass --leaderboard FILE.csv")
    with reading(path, "a UTF-8 CSV leaderboard", "repair it, or pass --leaderboard a new file",
                 only=(UnicodeDecodeError, csv.Error)), path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        header = list(reader.fieldnames or [])
        rows = list(reader)
    for i, row in enumerate(rows, start=2):
        if None in row:  # more cells than header columns
            raise ValueError(f"{path}: line {i}: more cells than the header has columns")
    return header, rows


def check_leaderboard(csv_path: str | os.PathLike) -> None:
    """Refuse, before anything is scored or printed, a leaderboard that could not be read or rewritten."""
    read_leaderboard(csv_path)
    check_writable(csv_path, what="the leaderboard")


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)  # shortest exact round trip
    return str(value)


def append_row(csv_path: str | os.PathLike, row: Mapping[str, object]) -> None:
    """Add ``row`` to the leaderboard, creating the file (and its folder) if needed."""
    if not row or any(not isinstance(k, str) or not k for k in row):
        raise ValueError(f"leaderboard row needs non-empty string column names, got {row!r}")
    header, rows = read_leaderboard(csv_path)
    header = header + [key for key in row if key not in header]
    rows.append({key: _cell(value) for key, value in row.items()})
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=header, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_bytes_atomic(csv_path, buf.getvalue().encode("utf-8"), force=True)


def _as_float(text: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return -math.inf
    return -math.inf if math.isnan(value) else value


def _display(text: str, digits: int) -> str:
    try:
        int(text)
        return text
    except ValueError:
        pass
    try:
        return f"{float(text):.{digits}f}"
    except ValueError:
        return text.replace("|", "\\|")


def format_leaderboard(
    csv_path: str | os.PathLike,
    primary: str = "map",
    highlight: str | None = None,
    digits: int = 4,
) -> str:
    """Markdown table of the leaderboard, best ``primary`` first (missing values last, ties
    in file order). The newest row whose ``name`` equals ``highlight`` is marked ``<- new``."""
    header, rows = read_leaderboard(csv_path)
    if not rows:
        return f"(leaderboard {csv_path} is empty)"
    if primary not in header:
        raise ValueError(f"primary metric {primary!r} is not a column of {csv_path}; "
                         f"columns: {', '.join(header)}")
    marked = None
    if highlight is not None:
        matches = [i for i, r in enumerate(rows) if r.get("name") == highlight]
        marked = matches[-1] if matches else None
    order = sorted(range(len(rows)), key=lambda i: -_as_float(rows[i][primary]))
    first = [c for c in ("name", primary) if c in header]
    columns = first + [c for c in header if c not in first]
    table = [["rank", *columns, ""]]
    for rank, i in enumerate(order, start=1):
        cells = [_display(rows[i].get(c) or "", digits) for c in columns]
        table.append([str(rank), *cells, NEW_MARK if i == marked else ""])
    widths = [max(len(r[c]) for r in table) for c in range(len(table[0]))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(table[0]), rule, *(line(r) for r in table[1:])])
