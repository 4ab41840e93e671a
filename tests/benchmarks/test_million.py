"""The million-gallery benchmark's measures, checked by hand, and its run at a tiny size."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from simsearch.benchmarks.million import _quality, main, neighbour_agreement

# four unit vectors on a circle: 0, 10, 90 and 180 degrees
ANGLES = np.radians([0.0, 10.0, 90.0, 180.0])
X = np.stack([np.cos(ANGLES), np.sin(ANGLES)], axis=1).astype(np.float32)


def test_neighbour_agreement_by_hand() -> None:
    q, g = X[:1], X[1:]  # stacked ids: 0 = q0 (0 deg), 1 = g0 (10), 2 = g1 (90), 3 = g2 (180)
    items = np.array([0, 3])
    exact = np.array([[0, 1], [3, 2]])  # each item itself, then its nearest other
    assert neighbour_agreement(q, g, items, exact) == 1.0
    wrong = np.array([[0, 2], [3, 2]])  # item 0's second neighbour is 90 deg, not 10 deg: 1 of 4 missed
    assert neighbour_agreement(q, g, items, wrong) == 0.75


def test_neighbour_agreement_counts_ties_as_found() -> None:
    q = np.array([[1.0, 0.0]], dtype=np.float32)
    g = np.array([[0.0, 1.0], [0.0, -1.0]], dtype=np.float32)  # both at 90 degrees from the query
    assert neighbour_agreement(q, g, np.array([0]), np.array([[0, 2]])) == 1.0
    assert neighbour_agreement(q, g, np.array([0]), np.array([[0, 1]])) == 1.0


def test_quality_by_hand() -> None:
    g_lab = np.array([0, 0, 1, 1, 1])
    q_lab = np.array([0, 1])
    ids = np.array([[0, 2, 1], [0, 2, 3]])
    # query 0: relevant at ranks 1 and 3 of 2 relevant: AP = (1 + 2/3) / 2; query 1: ranks 2 and 3 of
    # min(3, 3) relevant: AP = (1/2 + 2/3) / 3
    out = _quality(ids, q_lab, g_lab)
    assert out["r1"] == 0.5
    np.testing.assert_allclose(out["map"], ((1 + 2 / 3) / 2 + (1 / 2 + 2 / 3) / 3) / 2)


def test_runs_end_to_end_at_a_tiny_size(tmp_path: Path, capsys) -> None:
    out = tmp_path / "million.json"
    assert main(["--queries", "30", "--gallery", "2000", "--dim", "16", "--index", "IVF16,Flat", "--sample", "40",
                 "--check-queries", "20", "--check-gallery", "1000", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| **total** |" in text and "index IVF16,Flat -> IVF16,Flat" in text
    result = json.loads(out.read_text())
    run = result["run"]
    assert run["ntotal_after"] == 2030  # the gallery index got the queries for the neighbour search
    assert 0.5 < run["neighbour_agreement"] <= 1.0
    assert run["pipeline"]["r1"] >= 0.9 and run["timings_s"]["rerank_s"] > 0
    assert result["check"]["index"] == "IVF16,Flat" and 0.0 <= result["check"]["top10_identical"] <= 1.0
