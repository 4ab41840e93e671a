"""Submission formats: each preset's exact bytes from a hand-made ranking, the reader's round trip,
class-level rows with a threshold, and bad specs naming their key."""
from __future__ import annotations

from pathlib import Path

import pytest

from simsearch.config import ConfigError, load
from simsearch.inference.formats import PRESETS, submission_spec
from simsearch.inference.submission import (
    class_predictions,
    detect_format,
    format_rows,
    map_ids_to_names,
    read_gallery_labels,
    read_submission,
    submission_format,
    write_submission,
)

# two queries over a four-image gallery, best first, with their similarities
RANKINGS = {"q2.jpg": ["g3.jpg", "g4.jpg", "g1.jpg", "g2.jpg"], "q1.jpg": ["g1.jpg", "g2.jpg", "g3.jpg", "g4.jpg"]}
SCORES = {"q1.jpg": [0.9, 0.8, 0.4, 0.3], "q2.jpg": [0.7, 0.6, 0.55, 0.2]}
LABELS = {"g1.jpg": "w_a", "g2.jpg": "w_b", "g3.jpg": "w_a", "g4.jpg": "w_c"}
# product matching: the query set is the gallery set; p2's own score fell below the threshold (0.5)
ITEMS = {"p1.jpg": ["p1.jpg", "p2.jpg", "p3.jpg"], "p2.jpg": ["p1.jpg", "p2.jpg", "p3.jpg"],
         "p3.jpg": ["p3.jpg", "p1.jpg", "p2.jpg"]}
ITEM_SCORES = {"p1.jpg": [1.0, 0.6, 0.2], "p2.jpg": [0.7, 0.45, 0.1], "p3.jpg": [0.95, 0.3, 0.2]}

EXPECTED = {
    "landmark": "id,images\nq1,g1 g2 g3 g4\nq2,g3 g4 g1 g2\n",
    "product-matching": "posting_id,matches\np1,p1 p2\np2,p2 p1\np3,p3\n",
    # q1: w_a, w_b, then g3 (0.4) falls below 0.5: new_whale, g3's w_a again, g4's w_c
    # q2: w_a, w_c, g1's w_a again, then g2 (0.2) falls below: new_whale, w_b
    "whale": "Image,Id\nq1.jpg,w_a w_b new_whale w_c\nq2.jpg,w_a w_c new_whale w_b\n",
    "csv": "query,ranked_gallery\nq1.jpg,g1.jpg g2.jpg g3.jpg g4.jpg\nq2.jpg,g3.jpg g4.jpg g1.jpg g2.jpg\n",
}


def _write(tmp_path: Path, name: str, **changes: str) -> Path:
    spec = submission_spec(name, load(overrides=[f"infer.submission.{k}={v}" for k, v in changes.items()])
                           .infer.submission)
    rankings, scores = (ITEMS, ITEM_SCORES) if name == "product-matching" else (RANKINGS, SCORES)
    return write_submission(tmp_path / f"{name}.csv", rankings, spec, scores=scores, labels=LABELS)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_preset_writes_the_expected_bytes_and_reads_back(tmp_path: Path, name: str) -> None:
    path = _write(tmp_path, name)
    assert path.read_bytes() == EXPECTED[name].encode()
    assert detect_format(path) == PRESETS[name]
    rows = {line.split(",")[0]: line.split(",")[1].split() for line in EXPECTED[name].splitlines()[1:]}
    assert read_submission(path) == rows == read_submission(path, name)


def test_json_is_todays_format(tmp_path: Path) -> None:
    path = write_submission(tmp_path / "s.json", RANKINGS, "json")
    assert path.read_text() == ('{\n  "q1.jpg": [\n    "g1.jpg",\n    "g2.jpg",\n    "g3.jpg",\n'
                                '    "g4.jpg"\n  ],\n  "q2.jpg": [\n    "g3.jpg",\n    "g4.jpg",\n'
                                '    "g1.jpg",\n    "g2.jpg"\n  ]\n}\n')
    assert read_submission(path) == RANKINGS


def test_csv_layout_keys_header_separator_ids_top_k(tmp_path: Path) -> None:
    path = _write(tmp_path, "csv", header="[key,ranked]", separator="';'", ids="stem", top_k="2")
    assert path.read_text() == "key,ranked\nq1,g1;g2\nq2,g3;g4\n"
    with pytest.raises(ValueError, match=r"line 1: header \['key', 'ranked'\] is no known format's.*--format"):
        read_submission(path)
    spec = submission_spec("csv", load(overrides=["infer.submission.header=[key,ranked]",
                                                  "infer.submission.separator=;"]).infer.submission)
    assert read_submission(path, spec) == {"q1": ["g1", "g2"], "q2": ["g3", "g4"]}


def test_threshold_on_instance_level_keeps_items_at_or_above_it(tmp_path: Path) -> None:
    path = _write(tmp_path, "csv", threshold="0.6")
    assert path.read_text() == "query,ranked_gallery\nq1.jpg,g1.jpg g2.jpg\nq2.jpg,g3.jpg g4.jpg\n"


def test_class_predictions_put_the_unknown_label_where_similarity_falls_below_the_threshold() -> None:
    ranked = ["g1.jpg", "g2.jpg", "g3.jpg", "g4.jpg"]
    labels = {"g1.jpg": "a", "g2.jpg": "a", "g3.jpg": "b", "g4.jpg": "c"}
    # 0.9 a, 0.8 a again, 0.45 < 0.5: new before b, then c
    assert class_predictions(ranked, [0.9, 0.8, 0.45, 0.3], labels, 5, 0.5, "new") == ["a", "new", "b", "c"]
    assert class_predictions(ranked, [0.9, 0.8, 0.45, 0.3], labels, 2, 0.5, "new") == ["a", "new"]
    assert class_predictions(ranked, [0.4, 0.3, 0.2, 0.1], labels, 3, 0.5, "new") == ["new", "a", "b"]
    # nothing falls below: the unknown label takes the free slot at the end
    assert class_predictions(ranked, [0.9, 0.8, 0.7, 0.6], labels, 5, 0.5, "new") == ["a", "b", "c", "new"]
    assert class_predictions(ranked, [0.9, 0.8, 0.7, 0.6], labels, 3, 0.5, "new") == ["a", "b", "c"]
    assert class_predictions(ranked, [0.9, 0.8, 0.7, 0.6], labels, 5) == ["a", "b", "c"]  # no threshold


def test_gallery_labels_csv_and_ids_back_to_names(tmp_path: Path) -> None:
    csv_path = tmp_path / "train.csv"
    csv_path.write_text("Image,Id\ng1.jpg,w_a\ng2,w_b\n")
    assert read_gallery_labels(csv_path, "Image", "Id") == {"g1.jpg": "w_a", "g2": "w_b"}
    with pytest.raises(ValueError, match=r"train\.csv: line 1: no column 'name'"):
        read_gallery_labels(csv_path)
    csv_path.write_text("Image,Id\ng1.jpg,w_a\ng1.jpg,w_b\n")
    with pytest.raises(ValueError, match=r"line 3: 'g1.jpg' has two labels"):
        read_gallery_labels(csv_path, "Image", "Id")
    # g1 has one file, g2 two (ambiguous), sub/g3.jpg nested; "zz" is no name: left for validation
    named, errors = map_ids_to_names({"q1": ["g1", "g2", "sub/g3", "zz"]}, ["q1.jpg"],
                                     {"g1.jpg", "g1", "g2.jpg", "g2.png", "g2", "sub/g3.jpg", "sub/g3"})
    assert named == {"q1.jpg": ["g1.jpg", "g2.jpg", "sub/g3.jpg", "zz"]}
    assert errors == ["query 'q1': 1 ids name several gallery files: 'g2'"]


def test_extension_and_format_must_agree(tmp_path: Path) -> None:
    assert submission_format(tmp_path / "s.csv", "landmark") == "landmark"
    assert submission_format(tmp_path / "s.csv") == "csv"
    with pytest.raises(ValueError, match=r"s\.json.*infer\.format=whale writes \.csv"):
        submission_format(tmp_path / "s.json", "whale")


@pytest.mark.parametrize("name, overrides, message", [
    ("xml", [], r"infer\.format: 'xml' must be one of json, csv, landmark, product-matching, whale"),
    ("csv", ["header=[a,b,c]"], r"infer\.submission\.header: must be two .*\['a', 'b', 'c'\]"),
    ("landmark", ["header=[id,id]"], r"infer\.submission\.header: .*\['id', 'id'\]"),
    ("product-matching", ["threshold=1.5"], r"infer\.submission\.threshold: must be in \[-1\.0, 1\.0\].*1\.5"),
    ("landmark", ["top_k=0"], r"infer\.submission\.top_k: must be >= 1.*0"),
    ("csv", ["ids=basename"], r"infer\.submission\.ids: 'basename' must be one of name, stem"),
    ("csv", ["level=image"], r"infer\.submission\.level: 'image' must be one of instance, class"),
    ("csv", ["separator='a\"b'"], r"infer\.submission\.separator: .*'a\"b'"),
    ("json", ["header=[id,images]"], r"infer\.submission\.header.*json"),
    ("whale", ["unknown_label=' '"], r"infer\.submission\.unknown_label: .*' '"),
])
def test_bad_specs_name_the_key_and_the_value(name: str, overrides: list[str], message: str) -> None:
    cfg = load(overrides=[f"infer.submission.{o}" for o in overrides])
    with pytest.raises(ConfigError, match=message):
        submission_spec(name, cfg.infer.submission)


def test_a_separator_inside_an_id_names_the_key_and_the_id(tmp_path: Path) -> None:
    spec = submission_spec("csv", load(overrides=["infer.submission.separator=;"]).infer.submission)
    with pytest.raises(ValueError, match=r"query 'q1': id 'a;b' contains the separator ';'.*infer\.submission\."
                                         r"separator"):
        write_submission(tmp_path / "s.csv", {"q1": ["a;b"]}, spec)
    with pytest.raises(ValueError, match=r"query 'q1': id 'a b' contains whitespace"):
        write_submission(tmp_path / "s.csv", {"q1": ["a b"]}, "landmark")
    assert not (tmp_path / "s.csv").exists()


def test_class_level_needs_labels_and_scores_and_stems_must_stay_distinct(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="gallery_labels"):
        format_rows(RANKINGS, PRESETS["whale"], SCORES)
    with pytest.raises(ValueError, match=r"no label for 1 gallery name\(s\): 'g4\.jpg'"):
        format_rows(RANKINGS, PRESETS["whale"], SCORES, {k: v for k, v in LABELS.items() if k != "g4.jpg"})
    with pytest.raises(ValueError, match="similarity scores"):
        format_rows(ITEMS, PRESETS["product-matching"])
    with pytest.raises(ValueError, match=r"'a\.jpg' and 'a\.png' would both be written as 'a'"):
        format_rows({"a.jpg": [], "a.png": []}, PRESETS["landmark"])
