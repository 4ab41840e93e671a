"""simsearch infer / score on competition-shaped data: nested folders, CSV manifests, one test CSV."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from tools.infer import main as infer_main
from tools.score import main as score_main

from conftest import CONFIGS, make_class_folder, train_tiny_checkpoint

TEMPLATE = "test/{id[0]}/{id[1]}/{id}.jpg"
MAPPING = ["data.columns.id=id", f"data.path_template={TEMPLATE}"]


@pytest.fixture(scope="module")
def comp(tmp_path_factory) -> Path:
    """A tiny checkpoint; 24 unseen images (6 looks x 4) as test/<c>/<i>/<id>.jpg listed in test.csv
    (every row both a query and a gallery item, 3 labels of 8), and the same images as nested
    query/gallery folders (one query per look)."""
    root = tmp_path_factory.mktemp("csvcomp")
    train_tiny_checkpoint(root, n_classes=6)
    src = make_class_folder(root / "src", n_classes=6, per_class=4, seed=5)
    rows = ["id,label,is_query,is_gallery"]
    for c, cls in enumerate(sorted(src.iterdir())):
        for i, img in enumerate(sorted(cls.iterdir())):
            image_id = f"{c}{i}x{c}{i}"
            target = root / "test" / str(c) / str(i) / f"{image_id}.jpg"
            target.parent.mkdir(parents=True)
            shutil.copy(img, target)
            rows.append(f"{image_id},L{(c + i // 2) % 3},1,1")  # labels cut across the looks: scores below 1
            if i == 0:
                (root / "query" / f"c{c}").mkdir(parents=True)
                shutil.copy(img, root / "query" / f"c{c}" / "q.jpg")
            else:
                (root / "gallery" / f"c{c}" / "sub").mkdir(parents=True, exist_ok=True)
                shutil.copy(img, root / "gallery" / f"c{c}" / "sub" / f"g{i}.jpg")
    (root / "test.csv").write_text("\n".join(rows) + "\n")
    return root


def _infer(comp: Path, out: Path, *args: str) -> int:
    return infer_main(["--checkpoint", str(comp / "runs/tiny_test/best"), "--out", str(out),
                       f"infer.cache_dir={out.parent / 'cache'}", *args])


def _labels(comp: Path) -> dict[str, str]:
    return {row.split(",")[0]: row.split(",")[1] for row in (comp / "test.csv").read_text().splitlines()[1:]}


def _by_hand(sub: dict[str, list[str]], label: dict[str, str]) -> dict[str, float]:
    """R@1 and mAP of a submission against 'the other items of the query's label', with plain loops."""
    r1, ap = [], []
    for q, ranked in sub.items():
        relevant = {g for g in label if g != q and label[g] == label[q]}
        r1.append(float(ranked[0] in relevant))
        hits, total = 0, 0.0
        for rank, g in enumerate(ranked, start=1):
            if g in relevant:
                hits += 1
                total += hits / rank
        ap.append(total / len(relevant))
    return {"r1": sum(r1) / len(r1), "map": sum(ap) / len(ap)}


def _scores(text: str) -> dict[str, float]:
    return {line.split()[0]: float(line.split()[1]) for line in text.splitlines() if line.startswith("  ")}


def test_test_csv_all_rows_both_never_ranks_a_query_for_itself(comp, tmp_path, capsys):
    out = tmp_path / "sub.json"
    assert _infer(comp, out, "--test-csv", str(comp / "test.csv"), *MAPPING) == 0
    sub = json.loads(out.read_text())
    label = _labels(comp)
    assert sorted(sub) == sorted(label)  # names are the id column's values
    for q, ranked in sub.items():
        assert q not in ranked and len(ranked) == 10 and set(ranked) <= set(label)  # top_k=10 kept in full
    meta = json.loads((tmp_path / "sub.meta.json").read_text())
    assert meta["self_excluded"] == 24 and meta["retrieval"]["exclude_self"] is True
    assert meta["leaks"] == []  # a row's own file in the gallery is no leak
    capsys.readouterr()
    assert score_main([str(out), "--test-csv", str(comp / "test.csv"), "data.columns.id=id",
                       "--no-leaderboard"]) == 0
    scores = _scores(capsys.readouterr().out)
    by_hand = _by_hand(sub, label)
    assert 0 < by_hand["map"] < 0.9  # not a perfect ranking, where any metric agrees
    assert scores["r1"] == pytest.approx(by_hand["r1"], abs=1e-4)
    assert scores["map"] == pytest.approx(by_hand["map"], abs=1e-4)


def test_whole_gallery_ranking_has_every_other_item(comp, tmp_path):
    out = tmp_path / "all.json"
    assert _infer(comp, out, "--test-csv", str(comp / "test.csv"), *MAPPING, "infer.top_k=all") == 0
    sub = json.loads(out.read_text())
    assert all(sorted(ranked) == sorted(set(sub) - {q}) for q, ranked in sub.items())


def test_score_with_a_labelled_test_csv_is_hand_computed(tmp_path, capsys):
    csv = tmp_path / "test.csv"
    csv.write_text("id,label,is_query,is_gallery\na,1,1,1\nb,1,1,1\nc,2,1,1\nd,2,1,1\n")
    sub = tmp_path / "sub.json"
    sub.write_text(json.dumps({"a": ["c", "b", "d"], "b": ["a", "c", "d"], "c": ["a", "b", "d"],
                               "d": ["c", "a", "b"]}))
    assert score_main([str(sub), "--test-csv", str(csv), "data.columns.id=id", "--no-leaderboard"]) == 0
    scores = _scores(capsys.readouterr().out)
    # relevant (without self): a->b, b->a, c->d, d->c; first hits at ranks 2, 1, 3, 1
    assert scores["r1"] == pytest.approx(0.5, abs=1e-4)
    assert scores["map"] == pytest.approx((1 / 2 + 1 + 1 / 3 + 1) / 4, abs=1e-4)
    # the same ground truth as JSON, each query in its own list: kept (with a note) unless the meta says
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps({"a": ["a", "b"], "b": ["a", "b"], "c": ["c", "d"], "d": ["c", "d"]}))
    assert score_main([str(sub), "--ground-truth", str(gt), "--no-leaderboard"]) == 0
    captured = capsys.readouterr()
    assert "--exclude-self" in captured.err and _scores(captured.out)["map"] < scores["map"]
    (tmp_path / "sub.meta.json").write_text(json.dumps({"self_excluded": 4}))
    assert score_main([str(sub), "--ground-truth", str(gt), "--no-leaderboard"]) == 0
    assert _scores(capsys.readouterr().out) == scores


def test_nested_folders_give_relative_names(comp, tmp_path, capsys):
    out = tmp_path / "nested.json"
    assert _infer(comp, out, "--query-dir", str(comp / "query"), "--gallery-dir", str(comp / "gallery")) == 0
    sub = json.loads(out.read_text())
    assert sorted(sub) == [f"c{c}/q.jpg" for c in range(6)]
    gallery = {f"c{c}/sub/g{i}.jpg" for c in range(6) for i in range(1, 4)}
    assert all(len(r) == 10 and set(r) <= gallery for r in sub.values())
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps({f"c{c}/q.jpg": [f"c{c}/sub/g{i}.jpg" for i in range(1, 4)] for c in range(6)}))
    # the scorer's gallery check scans the same folder the same way
    assert score_main([str(out), "--ground-truth", str(gt), "--gallery-dir", str(comp / "gallery"),
                       "--no-leaderboard"]) == 0


def test_query_and_gallery_manifests_name_items_by_id(comp, tmp_path):
    rows = (comp / "test.csv").read_text().splitlines()[1:]
    (tmp_path / "q.csv").write_text("id\n" + "".join(f"{r.split(',')[0]}\n" for r in rows[::4]))
    (tmp_path / "g.csv").write_text("id\n" + "".join(f"{r.split(',')[0]}\n" for i, r in enumerate(rows) if i % 4))
    out = tmp_path / "sub.json"
    assert _infer(comp, out, "--query-csv", str(tmp_path / "q.csv"), "--gallery-csv", str(tmp_path / "g.csv"),
                  *MAPPING, f"data.image_root={comp}") == 0
    sub = json.loads(out.read_text())
    assert sorted(sub) == [f"{c}0x{c}0" for c in range(6)]
    assert all(set(r) <= {f"{c}{i}x{c}{i}" for c in range(6) for i in range(1, 4)} for r in sub.values())
    assert json.loads((tmp_path / "sub.meta.json").read_text())["self_excluded"] == 0


def test_missing_files_are_all_reported_before_any_model_work(comp, tmp_path, capsys):
    csv = tmp_path / "test.csv"
    lines = (comp / "test.csv").read_text().splitlines()
    csv.write_text("\n".join(lines[:2] + ["9zgone1,L0,1,1"] + lines[2:3] + ["8ygone2,L1,1,1"]) + "\n")
    # the checkpoint does not exist either: the manifest is checked first
    rc = infer_main(["--checkpoint", str(tmp_path / "no_run"), "--config", str(CONFIGS / "tiny_test.yaml"),
                     "--test-csv", str(csv), "--out", str(tmp_path / "s.json"), *MAPPING,
                     f"data.image_root={comp}"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert f"{csv}: 2 image files do not exist" in err
    assert "line 3: '9zgone1' -> " in err and "line 5: '8ygone2' -> " in err and "no_run" not in err
    assert not (tmp_path / "s.json").exists()


def test_each_side_takes_exactly_one_source(comp, tmp_path, capsys):
    base = ["--checkpoint", str(comp / "runs/tiny_test/best"), "--out", str(tmp_path / "s.json")]
    assert infer_main([*base, "--query-dir", str(comp / "query"), "--query-csv", str(comp / "test.csv"),
                       "--gallery-dir", str(comp / "gallery")]) == 2
    assert "exactly one of --query-dir and --query-csv" in capsys.readouterr().err
    assert infer_main([*base, "--test-csv", str(comp / "test.csv"), "--gallery-dir", str(comp / "gallery")]) == 2
    assert "--test-csv gives both" in capsys.readouterr().err
    assert infer_main([*base, "--test-csv", str(comp / "test.csv"), "data.columns.id=image_id",
                       f"data.path_template={TEMPLATE}"]) == 2
    assert "line 1: missing column 'image_id'" in capsys.readouterr().err


def test_ablation_from_a_labelled_test_csv_matches_the_scored_baseline(comp, tmp_path, capsys):
    assert infer_main(["--checkpoint", str(comp / "runs/tiny_test/best"), "--test-csv", str(comp / "test.csv"),
                       *MAPPING, "--ablate"]) == 0
    baseline = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| baseline"))
    r1, _, mean_ap = (float(x) for x in baseline.split("|")[2:5])
    out = tmp_path / "base.json"  # the baseline row's settings, as a submission
    assert _infer(comp, out, "--test-csv", str(comp / "test.csv"), *MAPPING, "infer.tta_flip=false",
                  "infer.rerank=false", "infer.top_k=all") == 0
    by_hand = _by_hand(json.loads(out.read_text()), _labels(comp))
    assert mean_ap < 0.9
    assert r1 == pytest.approx(by_hand["r1"], abs=1e-4) and mean_ap == pytest.approx(by_hand["map"], abs=1e-4)
