"""Ground truth from labels (without self) and the self-match rule of scoring."""
from __future__ import annotations

import json
from pathlib import Path

from simsearch.evaluation.ground_truth import (
    ground_truth_from_labels,
    ground_truth_from_test_csv,
    scoring_ground_truth,
    without_self,
)


def test_labels_give_the_other_items_of_each_label() -> None:
    gt = ground_truth_from_labels([("a", "1"), ("c", "2"), ("e", "3")],
                                  [("a", "1"), ("b", "1"), ("c", "2"), ("d", "2"), ("f", "1")])
    assert gt == {"a": ["b", "f"], "c": ["d"], "e": []}


def test_test_csv_ground_truth_without_images(tmp_path: Path) -> None:
    csv = tmp_path / "test.csv"
    csv.write_text("path,label,is_query,is_gallery\nx/a.jpg,1,1,1\nx/b.jpg,1,0,1\ny/c.jpg,2,1,0\n")
    assert ground_truth_from_test_csv(csv) == {"x/a.jpg": ["x/b.jpg"], "y/c.jpg": []}


def test_self_leaves_the_ground_truth_only_when_the_submission_left_it_out(tmp_path: Path) -> None:
    gt = {"a": ["a", "b"], "b": ["a", "b"], "c": ["d"]}
    assert without_self(gt) == ({"a": ["b"], "b": ["a"], "c": ["d"]}, 2)
    sub = tmp_path / "sub.json"
    kept, note = scoring_ground_truth(gt, sub)  # no meta file: kept, with a note
    assert kept == gt and "--exclude-self" in note
    free, note = scoring_ground_truth(gt, sub, exclude_self=True)
    assert free == {"a": ["b"], "b": ["a"], "c": ["d"]} and "2 queries" in note
    (tmp_path / "sub.meta.json").write_text(json.dumps({"self_excluded": 3}))
    assert scoring_ground_truth(gt, sub)[0] == free
    (tmp_path / "sub.meta.json").write_text(json.dumps({"self_excluded": 0}))
    assert scoring_ground_truth(gt, sub)[0] == gt
    assert scoring_ground_truth({"c": ["d"]}, sub) == ({"c": ["d"]}, None)
