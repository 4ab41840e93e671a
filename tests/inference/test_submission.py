"""Submission writing/reading round trips, atomicity, determinism and validation."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from simsearch.inference.submission import (
    SubmissionError,
    assert_valid_submission,
    gallery_names_from_dir,
    read_ground_truth,
    read_submission,
    validate_submission,
    write_submission,
)
from simsearch.utils import fs

RANKINGS = {"q2": ["g3", "g1"], "q1": ["g1", "g2", "g3"], "q3": []}


@pytest.mark.parametrize("fmt", ["json", "csv"])
def test_round_trip(tmp_path: Path, fmt: str) -> None:
    path = write_submission(tmp_path / f"sub.{fmt}", RANKINGS, fmt=fmt)
    assert read_submission(path) == RANKINGS  # row order of each ranking preserved


def test_json_is_deterministic_and_sorted(tmp_path: Path) -> None:
    a = write_submission(tmp_path / "a.json", RANKINGS)
    b = write_submission(tmp_path / "b.json", dict(reversed(list(RANKINGS.items()))))
    assert a.read_bytes() == b.read_bytes()
    text = a.read_text(encoding="utf-8")
    assert text.index('"q1"') < text.index('"q2"') < text.index('"q3"')
    assert text.endswith("\n")
    assert json.loads(text) == RANKINGS


def test_csv_layout(tmp_path: Path) -> None:
    path = write_submission(tmp_path / "s.csv", RANKINGS, fmt="csv")
    assert path.read_text(encoding="utf-8") == (
        "query,ranked_gallery\nq1,g1 g2 g3\nq2,g3 g1\nq3,\n"
    )


def test_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    path = tmp_path / "sub.json"
    write_submission(path, {"q": ["a"]})
    with pytest.raises(FileExistsError, match=r"sub\.json.*--force"):
        write_submission(path, {"q": ["b"]})
    assert read_submission(path) == {"q": ["a"]}
    write_submission(path, {"q": ["b"]}, force=True)
    assert read_submission(path) == {"q": ["b"]}


def test_failed_write_leaves_no_partial_file(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "sub.json"
    write_submission(path, {"q": ["old"]})

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(fs.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        write_submission(path, {"q": ["new"]}, force=True)
    assert read_submission(path) == {"q": ["old"]}  # the old file is intact
    assert os.listdir(tmp_path) == ["sub.json"]  # and the temp file is gone


def test_write_rejects_bad_rankings(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'q1'.*list"):
        write_submission(tmp_path / "s.json", {"q1": "g1"})
    with pytest.raises(ValueError, match="'q1'.*whitespace"):
        write_submission(tmp_path / "s.csv", {"q1": ["a b"]}, fmt="csv")
    with pytest.raises(ValueError, match="fmt"):
        write_submission(tmp_path / "s.txt", {"q1": ["a"]}, fmt="txt")


def test_malformed_json_reports_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{\n  "q1": ["a",]\n}\n')
    with pytest.raises(ValueError, match=r"bad\.json.*line 2 column"):
        read_submission(path)


@pytest.mark.parametrize(
    "content,match",
    [
        ('{"q1": "g1"}', "'q1'.*list"),
        ('{"q1": ["g1", 3]}', "'q1'.*3"),
        ('{"q1": ["a"], "q1": ["b"]}', "'q1' appears twice"),
        ('[["q1", "g1"]]', "mapping"),
    ],
)
def test_wrong_json_shapes_name_the_query(tmp_path: Path, content: str, match: str) -> None:
    path = tmp_path / "s.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=match):
        read_submission(path)


def test_csv_errors(tmp_path: Path) -> None:
    path = tmp_path / "s.csv"
    path.write_text("id,ranked\nq1,a\n")
    with pytest.raises(ValueError, match="line 1.*header"):
        read_submission(path)
    path.write_text("query,ranked_gallery\nq1,a\nq1,b\n")
    with pytest.raises(ValueError, match="line 3.*'q1' appears twice"):
        read_submission(path)
    path.write_text("query,ranked_gallery\nq1,a,b\n")
    with pytest.raises(ValueError, match="line 2.*2 fields"):
        read_submission(path)
    with pytest.raises(ValueError, match="unknown format"):
        (tmp_path / "s.txt").write_text("x")
        read_submission(tmp_path / "s.txt")
    with pytest.raises(FileNotFoundError, match="nope.json"):
        read_submission(tmp_path / "nope.json")


def test_read_ground_truth_json_and_csv(tmp_path: Path) -> None:
    (tmp_path / "gt.json").write_text('{"q1": ["a", "b"], "q2": ["c"]}')
    (tmp_path / "gt.csv").write_text("query,relevant\nq1,a b\nq2,c\n")
    expected = {"q1": ["a", "b"], "q2": ["c"]}
    assert read_ground_truth(tmp_path / "gt.json") == expected
    assert read_ground_truth(tmp_path / "gt.csv") == expected


def test_validate_lists_every_problem_by_query() -> None:
    gt = {"q1": ["a"], "q2": ["b"], "q3": ["c"]}
    sub = {"q1": ["a", "b", "a"], "q2": ["zz", "b"], "q9": ["a"]}
    errors = validate_submission(sub, gt, gallery_names={"a", "b", "c", "d"})
    assert errors == [
        "query 'q3': missing from the submission",
        "query 'q9': not a query of the ground truth",
        "query 'q1': repeated gallery names 'a'",
        "query 'q2': 1 names not in the gallery: 'zz'",
    ]


def test_validate_checks_gallery_names_only_when_given() -> None:
    gt = {"q1": ["a"]}
    # "d" is a gallery item relevant to no query: not an error without a gallery list
    assert validate_submission({"q1": ["d", "a"]}, gt) == []
    assert validate_submission({"q1": []}, gt) == []  # an empty row just scores 0


def test_assert_valid_raises_submission_error() -> None:
    with pytest.raises(SubmissionError, match="'q2'.*missing") as info:
        assert_valid_submission({"q1": ["a"]}, {"q1": ["a"], "q2": ["b"]})
    assert isinstance(info.value, ValueError)
    assert info.value.errors == ["query 'q2': missing from the submission"]
    assert_valid_submission({"q1": ["a"]}, {"q1": ["a"]})


def test_gallery_names_from_dir(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "x.jpg").write_bytes(b"")
    (tmp_path / "sub" / "y.png").write_bytes(b"")
    (tmp_path / ".hidden.jpg").write_bytes(b"")
    assert gallery_names_from_dir(tmp_path) == {"x.jpg", "x", "sub/y.png", "sub/y"}
    with pytest.raises(ValueError, match="missing_dir"):
        gallery_names_from_dir(tmp_path / "missing_dir")
