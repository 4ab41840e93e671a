"""tools/score.py end to end on temporary files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tools.score import main

GT = {"q1": ["a"], "q2": ["b", "c"]}


@pytest.fixture()
def files(tmp_path: Path) -> dict[str, Path]:
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps(GT))
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"q1": ["x", "a"], "q2": ["b", "c"]}))
    return {"gt": gt, "good": good, "lb": tmp_path / "lb.csv"}


def test_valid_submission_is_scored_and_appended(files, capsys) -> None:
    argv = [str(files["good"]), "--ground-truth", str(files["gt"]), "--k", "1", "5",
            "--leaderboard", str(files["lb"])]
    assert main(argv) == 0
    out = capsys.readouterr().out
    # q1: AP 1/2, q2: AP 1 -> map 0.75; r1: 0 and 1 -> 0.5
    assert "map      0.7500" in out and "r1       0.5000" in out
    assert "<- new" in out
    lines = files["lb"].read_text().splitlines()
    assert len(lines) == 2 and lines[0].startswith("name,timestamp,submission,")
    assert lines[1].startswith("good,")
    assert main(argv + ["--name", "second"]) == 0
    assert len(files["lb"].read_text().splitlines()) == 3


def test_missing_query_exits_nonzero_naming_it(files, tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"q1": ["a"]}))
    code = main([str(bad), "--ground-truth", str(files["gt"]), "--leaderboard", str(files["lb"])])
    assert code == 2
    err = capsys.readouterr().err
    assert "'q2'" in err and "missing" in err
    assert not files["lb"].exists()


def test_gallery_dir_rejects_unknown_names(files, tmp_path: Path, capsys) -> None:
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        (gallery / name).write_bytes(b"")
    argv = [str(files["good"]), "--ground-truth", str(files["gt"]), "--no-leaderboard",
            "--gallery-dir", str(gallery)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "'q1'" in err and "'x'" in err and "not in the gallery" in err
    (gallery / "x.jpg").write_bytes(b"")
    assert main(argv) == 0


def test_malformed_file_and_bad_primary(files, tmp_path: Path, capsys) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    assert main([str(broken), "--ground-truth", str(files["gt"]), "--no-leaderboard"]) == 2
    assert "line 1 column 2" in capsys.readouterr().err
    argv = [str(files["good"]), "--ground-truth", str(files["gt"]), "--no-leaderboard",
            "--primary", "ndcg20"]
    assert main(argv) == 2
    assert "ndcg20" in capsys.readouterr().err
