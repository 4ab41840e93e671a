"""Leaderboard CSV growth and rendering."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from simsearch.evaluation.leaderboard import append_row, format_leaderboard, read_leaderboard


def rows_of(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_creates_then_appends(tmp_path: Path) -> None:
    path = tmp_path / "boards" / "leaderboard.csv"
    append_row(path, {"name": "a", "map": 0.5, "r1": 0.25})
    append_row(path, {"name": "b", "map": 0.75, "r1": 0.5})
    assert path.read_text().splitlines() == ["name,map,r1", "a,0.5,0.25", "b,0.75,0.5"]
    assert [p.name for p in path.parent.iterdir()] == ["leaderboard.csv"]  # no temp files


def test_new_columns_widen_the_file(tmp_path: Path) -> None:
    path = tmp_path / "lb.csv"
    append_row(path, {"name": "a", "map": 0.5})
    append_row(path, {"name": "b", "ndcg10": 0.9, "map": 0.6})
    header, rows = read_leaderboard(path)
    assert header == ["name", "map", "ndcg10"]
    assert rows == [
        {"name": "a", "map": "0.5", "ndcg10": ""},
        {"name": "b", "map": "0.6", "ndcg10": "0.9"},
    ]


def test_floats_keep_full_precision(tmp_path: Path) -> None:
    path = tmp_path / "lb.csv"
    append_row(path, {"name": "a", "map": 1 / 3})
    assert float(rows_of(path)[0]["map"]) == 1 / 3


def test_format_sorts_by_primary_and_marks_the_new_row(tmp_path: Path) -> None:
    path = tmp_path / "lb.csv"
    append_row(path, {"name": "old", "map": 0.5, "r1": 0.9})
    append_row(path, {"name": "best", "map": 0.8, "r1": 0.1})
    append_row(path, {"name": "new", "map": 0.6, "r1": 0.5})
    append_row(path, {"name": "broken", "map": "", "r1": 0.95})
    text = format_leaderboard(path, primary="map", highlight="new")
    lines = text.splitlines()
    assert lines[0].split("|")[1:4] == [" rank ", " name   ", " map    "]
    body = [[c.strip() for c in line.split("|")[1:-1]] for line in lines[2:]]
    assert [r[1] for r in body] == ["best", "new", "old", "broken"]
    assert body[1] == ["2", "new", "0.6000", "0.5000", "<- new"]
    assert [r[-1] for r in body].count("<- new") == 1
    by_r1 = format_leaderboard(path, primary="r1").splitlines()[2:]
    assert [line.split("|")[2].strip() for line in by_r1] == ["broken", "old", "new", "best"]


def test_highlight_marks_the_latest_of_repeated_names(tmp_path: Path) -> None:
    path = tmp_path / "lb.csv"
    append_row(path, {"name": "run", "map": 0.9})
    append_row(path, {"name": "run", "map": 0.1})
    lines = format_leaderboard(path, highlight="run").splitlines()[2:]
    assert lines[0].rstrip(" |").endswith("0.9000")
    assert lines[1].rstrip(" |").endswith("<- new")


def test_unknown_primary_names_it(tmp_path: Path) -> None:
    path = tmp_path / "lb.csv"
    append_row(path, {"name": "a", "map": 0.5})
    with pytest.raises(ValueError, match="'mrr'.*name, map"):
        format_leaderboard(path, primary="mrr")


def test_empty_leaderboard_and_bad_rows(tmp_path: Path) -> None:
    assert "empty" in format_leaderboard(tmp_path / "none.csv")
    with pytest.raises(ValueError, match="column names"):
        append_row(tmp_path / "lb.csv", {})
