import csv
import json
import shutil

import pytest
from tools.compare import main as compare_main
from tools.infer import main as infer_main

from conftest import CONFIGS, make_class_folder
from simsearch.benchmarks.compare import Competition, parse_approach, recommend, subset_competition
from simsearch.evaluation.metrics import score_rankings
from simsearch.inference.submission import read_ground_truth, read_submission
from simsearch.models.checkpoint import load_model


def make_competition(root, n_classes=4, n_train=6, n_gallery=3):
    """training/<class>/* plus flat test/query and test/gallery of the same classes, with ground truth."""
    pool = make_class_folder(root / "pool", n_classes=n_classes, per_class=n_train + 1 + n_gallery, size=32)
    gt = {}
    for c, folder in enumerate(sorted(pool.iterdir())):
        files = sorted(folder.iterdir())
        (root / "training" / folder.name).mkdir(parents=True)
        for f in files[:n_train]:
            shutil.move(f, root / "training" / folder.name / f.name)
        (root / "test" / "query").mkdir(parents=True, exist_ok=True)
        (root / "test" / "gallery").mkdir(parents=True, exist_ok=True)
        shutil.move(files[n_train], root / "test" / "query" / f"q_{c}.jpg")
        gt[f"q_{c}.jpg"] = []
        for i, f in enumerate(files[n_train + 1:]):
            shutil.move(f, root / "test" / "gallery" / f"g_{c}_{i}.jpg")
            gt[f"q_{c}.jpg"].append(f"g_{c}_{i}.jpg")
    shutil.rmtree(pool)
    (root / "test" / "ground_truth.json").write_text(json.dumps(gt))
    return root


TINY = str(CONFIGS / "tiny_test.yaml")
TINY_CNN = f"{TINY}+model.backbone=timm:test_efficientnet+data.image_size=32"


def _table_rows(md: str) -> list[list[str]]:
    lines = [line for line in md.splitlines() if line.startswith("| ") and not line.startswith("| approach")]
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines]


def test_compare_trains_two_tiny_approaches_and_scores_them_like_score_py(tmp_path, capsys):
    data = make_competition(tmp_path / "comp")
    out, work = tmp_path / "compare.md", tmp_path / "runs"
    args = ["--configs", TINY, TINY_CNN, "--data", str(data), "--out", str(out), "--work", str(work),
            "-o", "train.epochs=1", "data.val_fraction=0"]
    assert compare_main(args) == 0
    md = out.read_text()
    rows = _table_rows(md)
    assert [r[0] for r in rows] == ["tiny_test", "tiny_test-2"]
    assert rows[0][1] == "`open_clip:ViT-Tiny-Test`" and rows[1][1] == "`timm:test_efficientnet`"
    assert rows[0][2] == "32" and rows[1][2] == "32"
    assert "random init: wiring only" in rows[0][-1] and "model.backbone=timm:test_efficientnet" in rows[1][-1]
    # the oracle: the same checkpoint through tools/infer.py (plain protocol) and the scorer
    gt = read_ground_truth(data / "test" / "ground_truth.json")
    for row, run in zip(rows, ("tiny_test", "tiny_test-2")):
        sub = tmp_path / f"{run}.json"
        assert infer_main(["--checkpoint", str(work / run / "best"), "--query-dir", str(data / "test" / "query"),
                           "--gallery-dir", str(data / "test" / "gallery"), "--out", str(sub),
                           "infer.tta_flip=false", "infer.rerank=false", "infer.qe=none", "infer.top_k=all",
                           "infer.cache_dir=null"]) == 0
        m = score_rankings(read_submission(sub), gt, ks=(1, 5))
        assert [float(x) for x in row[4:8]] == pytest.approx([m["r1"], m["r5"], m["p5"], m["map"]], abs=1e-4)
        with open(work / run / "metrics.csv") as f:
            seconds = sum(float(r["seconds"]) for r in csv.DictReader(f) if int(r["epoch"]) >= 0)
        assert float(row[8]) == pytest.approx(seconds, abs=0.5)
        model, _ = load_model(work / run / "best")
        total = sum(p.numel() for p in model.parameters())
        assert row[11] == (f"{total / 1e6:.2f} M" if total >= 10_000 else f"{total:,}")
        assert row[12] == "16"
    assert "When to choose which." in md and "simsearch compare --configs" in md
    # never overwrite silently; --runs evaluates a finished run without training
    assert compare_main(args) == 2
    assert "compare.md exists; pass --force" in capsys.readouterr().err
    assert compare_main(["--runs", str(work / "tiny_test"), "--data", str(data), "--out", str(out),
                         "--force"]) == 0
    again = _table_rows(out.read_text())
    assert len(again) == 1 and again[0][4:8] == rows[0][4:8]


def test_reuse_takes_a_finished_run_instead_of_refusing(tmp_path, capsys):
    data = make_competition(tmp_path / "comp")
    base = ["--configs", TINY, "--data", str(data), "--work", str(tmp_path / "runs"), "-o", "train.epochs=1"]
    assert compare_main([*base, "--out", str(tmp_path / "a.md")]) == 0
    assert compare_main([*base, "--out", str(tmp_path / "b.md")]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert compare_main([*base, "--out", str(tmp_path / "b.md"), "--reuse"]) == 0
    a, b = _table_rows((tmp_path / "a.md").read_text()), _table_rows((tmp_path / "b.md").read_text())
    assert [r[:9] for r in a] == [r[:9] for r in b]  # same run, same scores and training time (img/s varies)


def _row(name, map_, r1, ips, trainable, total=1000, train_s=10.0, random_init=False, backbone=None):
    return {"approach": name, "map": map_, "r1": r1, "images_per_s": ips, "trainable": trainable,
            "total": total, "train_s": train_s, "random_init": random_init, "backbone": backbone or name,
            "input_size": 224, "dim": 512}


def test_recommend_names_each_winner_from_the_numbers():
    rows = [_row("full", 0.80, 0.90, 20.0, 1000, train_s=100.0),
            _row("fast", 0.70, 0.92, 80.0, 800, train_s=60.0),
            _row("lora", 0.75, 0.85, 20.0, 10, train_s=40.0),
            _row("wiring", 0.99, 0.99, 999.0, 1, train_s=1.0, random_init=True)]
    text = recommend(rows)
    assert text.startswith("For the best ranking choose **full** (mAP 0.8000, R@1 0.9000)")
    assert "for the best first hit **fast** (R@1 0.9200)" in text
    assert "when inference speed matters **fast** (80.0 img/s, 4.0x, mAP -0.1000)" in text
    assert "the fewest weights **lora** (10 trainable of 1,000, mAP -0.0500)" in text
    assert "shortest training **lora** (40 s against 100 s)" in text
    assert "wiring" not in text.split("(1 random-init")[0]
    assert text.endswith("(1 random-init row(s) are wiring checks and are left out of this advice.)")


def test_recommend_when_one_approach_wins_everything():
    rows = [_row("a", 0.8, 0.9, 50.0, 10, train_s=5.0), _row("b", 0.7, 0.8, 40.0, 100, train_s=9.0)]
    assert recommend(rows).startswith("**a** is best on every measured axis here: mAP 0.8000, 50.0 img/s")


def test_recommend_ignores_speed_and_time_leads_within_the_noise():
    rows = [_row("a", 0.8, 0.9, 50.0, 10, train_s=10.0), _row("b", 0.7, 0.8, 59.0, 100, train_s=8.5)]
    assert recommend(rows).startswith("**a** is best on every measured axis")  # 1.18x and 1.18x: noise
    rows[1].update(images_per_s=61.0, train_s=8.0)
    assert "speed matters **b** (61.0 img/s, 1.2x" in recommend(rows)
    assert "shortest training **b** (8 s against 10 s)" in recommend(rows)
    rows[1]["backbone"] = rows[0]["backbone"]  # the same network: its faster measurement is noise
    assert "speed matters" not in recommend(rows)


def test_subset_keeps_the_ground_truth_consistent(tmp_path):
    data = make_competition(tmp_path / "comp", n_classes=4, n_gallery=3)
    comp = Competition.from_root(data)
    sub = subset_competition(comp, tmp_path / "sub", max_queries=None, max_gallery=5, seed=0)
    gallery = {p.name for p in sub.gallery_dir.iterdir()}
    gt = read_ground_truth(sub.ground_truth)
    assert len(gallery) == 5
    full = read_ground_truth(data / "test" / "ground_truth.json")
    expected = {q: [g for g in rel if g in gallery] for q, rel in full.items()}
    assert gt == {q: rel for q, rel in expected.items() if rel}  # queries with nothing left are dropped
    assert {p.name for p in sub.query_dir.iterdir()} == set(gt)
    again = subset_competition(comp, tmp_path / "sub2", max_queries=None, max_gallery=5, seed=0)
    assert {p.name for p in again.gallery_dir.iterdir()} == gallery  # seeded: the same for every run


def test_bad_inputs_name_the_path(tmp_path, capsys):
    (tmp_path / "comp" / "training").mkdir(parents=True)
    out = str(tmp_path / "c.md")
    assert compare_main(["--configs", TINY, "--data", str(tmp_path / "comp"), "--out", out]) == 2
    assert f"missing folder {tmp_path / 'comp' / 'test' / 'query'}" in capsys.readouterr().err
    assert compare_main(["--configs", "nope.yaml", "--data", str(tmp_path), "--out", str(tmp_path / "c.md")]) == 2
    assert "config file not found: nope.yaml" in capsys.readouterr().err
    assert compare_main(["--runs", str(tmp_path), "--data", str(tmp_path), "--out", str(tmp_path / "c.md")]) == 2
    assert "neither a run folder with best/ nor a checkpoint folder" in capsys.readouterr().err


def test_approach_specs_layer_files_and_overrides(tmp_path):
    a = parse_approach(f"{TINY}+{CONFIGS / 'vae.yaml'}+model.backbone=vae:tiny+data.image_size=32")
    assert a.name == "tiny_test+vae" and a.files == [CONFIGS / "tiny_test.yaml", CONFIGS / "vae.yaml"]
    assert a.overrides == ["model.backbone=vae:tiny", "data.image_size=32"]
    assert parse_approach(f"{TINY}+train.epochs=0+run_name=zero_shot").name == "zero_shot"
    with pytest.raises(ValueError, match="names no config file"):
        parse_approach("train.epochs=1")
