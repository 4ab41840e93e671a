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


# --- every format infer writes: detected by header, ids without extension mapped back, class level ---------------


def _gallery(tmp_path: Path, names: list[str]) -> Path:
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    for name in names:
        (gallery / name).write_bytes(b"")
    return gallery


def _scores(capsys) -> dict[str, float]:
    out = capsys.readouterr().out
    return {p[0]: float(p[1]) for p in (line.split() for line in out.splitlines()[1:]) if len(p) == 2}


def test_landmark_ids_without_extension_are_scored_as_the_gallery_files(tmp_path: Path, capsys) -> None:
    sub = tmp_path / "landmark.csv"
    sub.write_text("id,images\nq1,g1 g2 g3 g4\nq2,g3 g4 g1 g2\n")
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps({"q1.jpg": ["g2.jpg", "g4.jpg"], "q2.jpg": ["g3.jpg"]}))
    gallery = _gallery(tmp_path, ["g1.jpg", "g2.jpg", "g3.jpg", "g4.jpg"])
    lb = tmp_path / "lb.csv"
    argv = [str(sub), "--ground-truth", str(gt), "--gallery-dir", str(gallery)]
    assert main([*argv, "--leaderboard", str(lb)]) == 0
    scores = _scores(capsys)
    # q1: hits at ranks 2 and 4 of 2 relevant -> AP (1/2 + 2/4) / 2 = 0.5; q2: AP 1 -> map 0.75, r1 0.5, mrr 0.75
    assert (scores["map"], scores["r1"], scores["mrr"]) == (0.75, 0.5, 0.75)
    assert lb.read_text().splitlines()[0].startswith("name,timestamp,submission,format,")
    assert ",landmark," in lb.read_text().splitlines()[1]
    (gallery / "g4.jpg").unlink()  # 'g4' (the ground truth's g4.jpg) is no gallery file now: both rows listed
    assert main([*argv, "--no-leaderboard"]) == 2
    err = capsys.readouterr().err
    assert all(f"query '{q}': 1 names not in the gallery: 'g4.jpg'" in err for q in ("q1.jpg", "q2.jpg"))


def test_product_matching_counts_each_item_as_its_own_match_and_adds_mean_f1(tmp_path: Path, capsys) -> None:
    sub = tmp_path / "pm.csv"
    sub.write_text("posting_id,matches\np1,p1 p2\np2,p2 p1\np3,p3\n")
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps({"p1.jpg": ["p2.jpg"], "p2.jpg": ["p1.jpg", "p3.jpg"], "p3.jpg": []}))
    assert main([str(sub), "--ground-truth", str(gt), "--no-leaderboard"]) == 0
    scores = _scores(capsys)
    # with themselves: p1 {p1,p2}, p2 {p1,p2,p3}, p3 {p3}; F1 1, 2*2/(2+3) = 0.8, 1 -> 0.9333
    # AP: p1 (1+1)/2 = 1, p2 (1+1)/3, p3 1 -> 0.8889
    assert round(scores["f1"], 4) == 0.9333 and round(scores["map"], 4) == 0.8889


def test_whale_is_scored_by_map5_from_labels_or_from_gallery_names(tmp_path: Path, capsys) -> None:
    sub = tmp_path / "whale.csv"
    sub.write_text("Image,Id\nq1.jpg,w_a w_b new_whale w_c\nq2.jpg,w_a w_c new_whale w_b\n")
    labels_gt = tmp_path / "gt.csv"
    labels_gt.write_text("query,label\nq1.jpg,w_c\nq2.jpg,new_whale\n")
    assert main([str(sub), "--ground-truth", str(labels_gt), "--no-leaderboard"]) == 0
    by_label = _scores(capsys)
    # q1's w_c at rank 4 -> 1/4, q2's new_whale at rank 3 -> 1/3: MAP@5 = (1/4 + 1/3) / 2
    assert by_label["map5"] == round((1 / 4 + 1 / 3) / 2, 4) == 0.2917 and by_label["r1"] == 0.0
    assert "p1" not in by_label and "ndcg10" not in by_label
    names_gt = tmp_path / "gt.json"  # q2 has no relevant gallery image: a new whale
    names_gt.write_text(json.dumps({"q1.jpg": ["g4.jpg"], "q2.jpg": []}))
    train = tmp_path / "train.csv"
    train.write_text("Image,Id\ng1.jpg,w_a\ng2.jpg,w_b\ng3.jpg,w_a\ng4.jpg,w_c\n")
    argv = [str(sub), "--ground-truth", str(names_gt), "--no-leaderboard", "--gallery-labels", str(train),
            "infer.submission.name_column=Image", "infer.submission.label_column=Id"]
    assert main(argv) == 0
    assert _scores(capsys) == by_label
    train.write_text("Image,Id\ng1.jpg,w_a\n")
    assert main(argv) == 2
    assert "no label for 1 gallery name(s): 'g4.jpg'" in capsys.readouterr().err


def test_unknown_header_and_custom_layout(tmp_path: Path, capsys) -> None:
    sub = tmp_path / "custom.csv"
    sub.write_text("key,ranked\nq1,x;a\nq2,b;c\n")
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps(GT))
    assert main([str(sub), "--ground-truth", str(gt), "--no-leaderboard"]) == 2
    assert "header ['key', 'ranked'] is no known format's" in capsys.readouterr().err
    argv = [str(sub), "--ground-truth", str(gt), "--no-leaderboard", "--format", "csv",
            "infer.submission.header=[key,ranked]", "infer.submission.separator=;"]
    assert main(argv) == 0
    assert _scores(capsys)["map"] == 0.75  # as test_valid_submission_is_scored_and_appended
    assert main([*argv, "infer.submission.threshold=2"]) == 2
    assert "infer.submission.threshold" in capsys.readouterr().err
    assert main([*argv[:-2], "--format", "landmark"]) == 2  # the file's header is not landmark's
    assert "expected header 'id,images'" in capsys.readouterr().err
