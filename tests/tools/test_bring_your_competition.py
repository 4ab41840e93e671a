"""A Kaggle-shaped competition through the installed command, with no glue code: nested images,
``train.csv`` (image,label), a test CSV with is_query / is_gallery, a ground-truth CSV; train the tiny
config, write every preset format, score each one; broken manifests name the row and the column."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import make_class_folder
from simsearch.cli import main

TEMPLATE = "data.path_template={id[0]}/{id[1]}/{id[2]}/{id}.jpg"


def _nested(img: Path, root: Path, image_id: str) -> str:
    rel = f"{image_id[0]}/{image_id[1]}/{image_id[2]}/{image_id}.jpg"
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(img, root / rel)
    return rel


@pytest.fixture(scope="module")
def kaggle(tmp_path_factory) -> Path:
    """train/ (4 classes x 6, nested by id), test/ (4 classes x 4, nested by id: the first image of
    each class a query only, the others gallery only), train.csv, test.csv, test_all.csv (every row
    both), solution.csv (query,relevant ids) and query_labels.csv (query,label)."""
    root = tmp_path_factory.mktemp("kaggle")
    rng = np.random.default_rng(3)
    src = make_class_folder(root / "src", n_classes=4, per_class=10, seed=7)
    train_rows, labels = ["image,label"], {}
    test_rows, all_rows = ["id,is_query,is_gallery"], ["id,is_query,is_gallery"]
    queries, gallery = [], []
    for c, cls in enumerate(sorted(src.iterdir())):
        for i, img in enumerate(sorted(cls.iterdir())):
            image_id = "".join(rng.choice(list("0123456789abcdef"), size=8))
            if i < 6:
                train_rows.append(f"{_nested(img, root / 'train', image_id)},whale_{c}")
                continue
            _nested(img, root / "test", image_id)
            labels[image_id] = f"whale_{c}"
            is_query = i == 6
            (queries if is_query else gallery).append(image_id)
            test_rows.append(f"{image_id},{int(is_query)},{int(not is_query)}")
            all_rows.append(f"{image_id},1,1")
    (root / "train.csv").write_text("\n".join(train_rows) + "\n")
    (root / "test.csv").write_text("\n".join(test_rows) + "\n")
    (root / "test_all.csv").write_text("\n".join(all_rows) + "\n")
    solution = [f"{q},{' '.join(g for g in gallery if labels[g] == labels[q])}" for q in queries]
    (root / "solution.csv").write_text("query,relevant\n" + "\n".join(solution) + "\n")
    query_labels = "\n".join(f"{q},{labels[q]}" for q in queries)
    (root / "query_labels.csv").write_text(f"query,label\n{query_labels}\n")
    (root / "queries.csv").write_text("id\n" + "\n".join(queries) + "\n")
    (root / "labels.json").write_text(json.dumps(labels))
    shutil.rmtree(src)
    assert main(["train", "--config", "tiny_test", f"data.train_csv={root / 'train.csv'}",
                 "data.columns.path=image", f"data.image_root={root / 'train'}",
                 f"train.output_dir={root / 'runs'}", "train.epochs=1"]) == 0
    return root


def _ckpt(root: Path) -> str:
    return str(root / "runs" / "tiny_test" / "best")


def _test_side(root: Path) -> list[str]:
    return ["data.columns.id=id", TEMPLATE, f"data.image_root={root / 'test'}"]


def _scored(capsys) -> dict[str, float]:
    out = capsys.readouterr().out
    return {line.split()[0]: float(line.split()[1]) for line in out.splitlines()
            if line.startswith("  ") and len(line.split()) == 2}


@pytest.mark.parametrize("fmt,suffix,header", [("json", "json", None), ("csv", "csv", "query,ranked_gallery"),
                                               ("landmark", "csv", "id,images")])
def test_instance_formats_from_a_test_csv_are_written_and_scored(kaggle, tmp_path, capsys, fmt, suffix, header):
    out = tmp_path / f"sub.{suffix}"
    assert main(["infer", "--checkpoint", _ckpt(kaggle), "--test-csv", str(kaggle / "test.csv"),
                 *_test_side(kaggle), "--format", fmt, "--out", str(out),
                 f"infer.cache_dir={tmp_path / 'cache'}"]) == 0
    text = out.read_text()
    queries = [line.split(",")[0] for line in (kaggle / "solution.csv").read_text().splitlines()[1:]]
    if header:
        lines = text.splitlines()
        assert lines[0] == header and sorted(line.split(",")[0] for line in lines[1:]) == sorted(queries)
        assert ".jpg" not in text  # ids, as the competition lists them
    else:
        assert sorted(json.loads(text)) == sorted(queries)
    capsys.readouterr()
    assert main(["score", str(out), "--ground-truth", str(kaggle / "solution.csv"), "--name", fmt,
                 "--leaderboard", str(tmp_path / "lb.csv")]) == 0
    scores = _scored(capsys)
    assert 0.0 <= scores["map"] <= 1.0 and "r1" in scores


def test_the_three_instance_formats_rank_alike(kaggle, tmp_path, capsys):
    """json, csv and landmark files of one run hold the same rankings, so they score the same."""
    results = {}
    for fmt, suffix in (("json", "json"), ("csv", "csv"), ("landmark", "csv")):
        out = tmp_path / f"{fmt}.{suffix}"
        assert main(["infer", "--checkpoint", _ckpt(kaggle), "--test-csv", str(kaggle / "test.csv"),
                     *_test_side(kaggle), "--format", fmt, "--out", str(out),
                     f"infer.cache_dir={tmp_path / 'cache'}"]) == 0
        capsys.readouterr()
        assert main(["score", str(out), "--ground-truth", str(kaggle / "solution.csv"), "--name", fmt,
                     "--leaderboard", str(tmp_path / "lb.csv")]) == 0
        results[fmt] = _scored(capsys)
    assert results["json"]["map"] == results["csv"]["map"] == results["landmark"]["map"]


def test_product_matching_where_query_and_gallery_are_one_set(kaggle, tmp_path, capsys):
    out = tmp_path / "matches.csv"
    assert main(["infer", "--checkpoint", _ckpt(kaggle), "--test-csv", str(kaggle / "test_all.csv"),
                 *_test_side(kaggle), "--format", "product-matching", "infer.submission.threshold=-1.0",
                 "--out", str(out), f"infer.cache_dir={tmp_path / 'cache'}"]) == 0
    lines = out.read_text().splitlines()
    assert lines[0] == "posting_id,matches"
    for line in lines[1:]:
        item, matches = line.split(",")
        assert matches.split()[0] == item  # the item matches itself, first, as the competition wants
        assert matches.split().count(item) == 1
    labels = json.loads((kaggle / "labels.json").read_text())
    gt = {q: [g for g in labels if g != q and labels[g] == labels[q]] for q in labels}
    (tmp_path / "matches.json").write_text(json.dumps(gt))
    capsys.readouterr()
    assert main(["score", str(out), "--ground-truth", str(tmp_path / "matches.json"), "--name", "pm",
                 "--leaderboard", str(tmp_path / "lb.csv")]) == 0
    scores = _scored(capsys)
    assert 0.0 < scores["f1"] <= 1.0


def test_class_level_whale_format_against_the_training_labels(kaggle, tmp_path, capsys):
    out = tmp_path / "whale.csv"
    assert main(["infer", "--checkpoint", _ckpt(kaggle), "--query-csv", str(kaggle / "queries.csv"),
                 *_test_side(kaggle), "--gallery-dir", str(kaggle / "train"), "--format", "whale",
                 f"infer.submission.gallery_labels={kaggle / 'train.csv'}", "infer.submission.name_column=image",
                 "infer.submission.label_column=label", "infer.top_k=all", "--out", str(out),
                 f"infer.cache_dir={tmp_path / 'cache'}"]) == 0
    lines = out.read_text().splitlines()
    assert lines[0] == "Image,Id" and len(lines) == 5
    for line in lines[1:]:
        labels = line.split(",")[1].split()
        assert len(labels) == 5 and len(set(labels)) == 5  # 4 known whales and new_whale, each once
        assert set(labels) == {"whale_0", "whale_1", "whale_2", "whale_3", "new_whale"}
    capsys.readouterr()
    assert main(["score", str(out), "--ground-truth", str(kaggle / "query_labels.csv"), "--format", "whale",
                 "--name", "whale", "--leaderboard", str(tmp_path / "lb.csv")]) == 0
    scores = _scored(capsys)
    assert 0.0 < scores["map5"] <= 1.0


@pytest.mark.parametrize("edit,expected", [
    (lambda rows: ["picture,label", *rows[1:]], ["line 1: missing column 'image'"]),
    # every missing file at once, each with its line, and the column the paths came from
    (lambda rows: [*rows, "z/z/z/zzzzzzzz.jpg,whale_0", "y/y/y/yyyyyyyy.jpg,whale_1"],
     ["2 image files do not exist", "column 'image'", "line 26: ", "line 27: "]),
    (lambda rows: [*rows, rows[1]], ["line 26: column 'image'", "repeats line 2"]),
])
def test_broken_train_csv_names_the_row_and_the_column(kaggle, tmp_path, capsys, edit, expected):
    rows = (kaggle / "train.csv").read_text().splitlines()
    bad = tmp_path / "train.csv"
    bad.write_text("\n".join(edit(rows)) + "\n")
    code = main(["train", "--config", "tiny_test", f"data.train_csv={bad}", "data.columns.path=image",
                 "data.columns.id=image", f"data.image_root={kaggle / 'train'}",
                 f"train.output_dir={tmp_path / 'r'}", "train.epochs=1"])
    err = capsys.readouterr().err
    assert code == 2 and str(bad) in err and all(e in err for e in expected), err
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").rglob("model.safetensors"))
