"""The re-ranking benchmark runs end to end at a tiny size, and its dev-set mode scores like the library."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import CONFIGS, make_class_folder
from simsearch.benchmarks.dense_reference import dense_memory_lower_bound
from simsearch.benchmarks.rerank import dev_winner, main
from simsearch.config import load
from simsearch.evaluation.metrics import score_rankings
from simsearch.inference.submission import read_ground_truth
from simsearch.retrieval.rerank import NORMS, k_reciprocal_rerank


def test_benchmark_smoke(tmp_path: Path, capsys) -> None:
    out = tmp_path / "bench.json"
    argv = ["--nq", "60", "--ng", "80", "--dim", "16", "--clusters", "10",
            "--dense-nq", "30", "--dense-ng", "40", "--repeats", "1", "--json", str(out)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "| sparse | 60 | 80 |" in text and "| dense | 30 | 40 |" in text
    summary = json.loads(out.read_text())
    assert [r["method"] for r in summary["runs"]] == ["sparse", "sparse", "dense"]
    assert summary["small_top1_agreement"] == 1.0
    assert summary["dense_full_size_lower_bound_gib"] == dense_memory_lower_bound(140) / 1024**3


def test_dense_memory_bound_is_four_float64_matrices() -> None:
    assert dense_memory_lower_bound(1000) == 1000 * 1000 * 8 * 4


def make_test_split(root: Path, n_classes: int = 4, per_class: int = 4) -> Path:
    """ROOT/test with one query per class, the class's other images as gallery, and ground truth."""
    pool = make_class_folder(root / "pool", n_classes=n_classes, per_class=per_class, size=32)
    test, gt = root / "test", {}
    (test / "query").mkdir(parents=True)
    (test / "gallery").mkdir()
    for c, folder in enumerate(sorted(pool.iterdir())):
        first, *rest = sorted(folder.iterdir())
        first.rename(test / "query" / f"q_{c}.jpg")
        gt[f"q_{c}.jpg"] = [f"g_{c}_{i}.jpg" for i in range(len(rest))]
        for i, f in enumerate(rest):
            f.rename(test / "gallery" / f"g_{c}_{i}.jpg")
    (test / "ground_truth.json").write_text(json.dumps(gt))
    return root


def test_dev_set_mode_scores_each_norm_like_the_library(tmp_path: Path, capsys) -> None:
    data, cache = make_test_split(tmp_path / "comp"), tmp_path / "cache"
    argv = ["--data", str(data), "--config", str(CONFIGS / "tiny_test.yaml"), "--cache", str(cache),
            "--json", str(tmp_path / "dev.json")]
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert "written to" in first and "| comp | 4 | 12 | column_max |" in first
    rows = json.loads((tmp_path / "dev.json").read_text())["rows"]
    assert [r["rerank_norm"] for r in rows] == ["none", *NORMS]
    # the oracle: the cached embeddings ranked here by cosine and by the library re-ranking
    z = np.load(next(cache.glob("*.npz")))
    q, g, names = z["query_emb"], z["gallery_emb"], z["gallery_names"]
    gt = read_ground_truth(data / "test" / "ground_truth.json")
    cfg = load([CONFIGS / "tiny_test.yaml"]).infer
    orders = {"none": np.argsort(-(q @ g.T), axis=1, kind="stable")}
    for norm in NORMS:
        orders[norm], _ = k_reciprocal_rerank(q, g, cfg.k1, cfg.k2, cfg.lambda_value, num_candidates=len(g),
                                              norm=norm)
    metrics = ("r1", "r5", "map", "mrr")
    for r in rows:
        order = orders[r["rerank_norm"]]
        ranked = {str(qn): [str(n) for n in names[row]] for qn, row in zip(z["query_names"], order)}
        m = score_rankings(ranked, gt, ks=(1, 5))
        assert [r[k] for k in metrics] == pytest.approx([m[k] for k in metrics])
    assert main(argv) == 0  # the second run embeds nothing
    second = capsys.readouterr().out
    assert "read from" in second and "written to" not in second
    assert json.loads((tmp_path / "dev.json").read_text())["rows"] == rows


def _row(data: str, norm: str, r1: float, m: float) -> dict:
    return {"data": data, "rerank_norm": norm, "r1": r1, "map": m}


def test_dev_winner_needs_the_best_map_on_every_set_and_no_lower_r1() -> None:
    rows = [_row("a", "none", 0.7, 0.3), _row("a", "fixed", 0.6, 0.4), _row("a", "column_max", 0.6, 0.5),
            _row("b", "none", 0.7, 0.3), _row("b", "fixed", 0.6, 0.4), _row("b", "column_max", 0.6, 0.45)]
    assert dev_winner(rows) == "column_max"  # a higher R@1 without re-ranking is infer.rerank's question
    rows[-1] = _row("b", "column_max", 0.6, 0.35)  # mAP split between the sets
    assert dev_winner(rows) is None
    rows[-1] = _row("b", "column_max", 0.55, 0.45)  # best mAP but a lower R@1
    assert dev_winner(rows) is None
    rows[2] = _row("a", "column_max", 0.6, 0.3)  # fixed best on both
    rows[-1] = _row("b", "column_max", 0.6, 0.35)
    assert dev_winner(rows) == "fixed"
