"""Metrics on hand-computed rankings, and the embedding version against PML's oracle."""

from __future__ import annotations

import math

import numpy as np
import pytest

from simsearch.evaluation import metrics as metrics_module
from simsearch.evaluation.metrics import (
    map_at_k,
    mean_f1,
    per_query_metrics,
    retrieval_metrics_from_embeddings,
    score_rankings,
)
from simsearch.utils.synthetic import clustered_unit_vectors

L2, L3, L4 = 1.0, 1 / math.log2(3), 0.5  # DCG discounts of ranks 1, 2, 3


def test_single_relevant_item_at_rank_two() -> None:
    m = score_rankings({"q": ["n1", "x", "n2"]}, {"q": ["x"]}, ks=(1, 5))
    assert m["r1"] == 0.0 and m["r5"] == 1.0
    assert m["p1"] == 0.0 and m["p5"] == pytest.approx(1 / 5)  # k beyond the list: still / k
    assert m["map"] == pytest.approx(0.5) and m["map5"] == pytest.approx(0.5)
    assert m["mrr"] == pytest.approx(0.5)
    assert m["ndcg5"] == pytest.approx(L3 / L2)


def test_relevant_items_missing_from_the_ranking() -> None:
    # 3 relevant; hits at ranks 1 and 3; x3 never retrieved
    m = score_rankings({"q": ["x1", "n", "x2", "m"]}, {"q": ["x1", "x2", "x3"]}, ks=(1, 2, 5, 10))
    assert m["map"] == pytest.approx((1 / 1 + 2 / 3) / 3)
    assert m["map2"] == pytest.approx((1 / 1) / 2)
    assert m["map10"] == pytest.approx((1 / 1 + 2 / 3) / 3)
    assert m["p2"] == pytest.approx(0.5) and m["p5"] == pytest.approx(2 / 5)
    assert m["r1"] == 1.0 and m["mrr"] == 1.0
    assert m["ndcg5"] == pytest.approx((L2 + L4) / (L2 + L3 + L4))
    assert m["ndcg2"] == pytest.approx(L2 / (L2 + L3))


def test_average_over_queries_missing_and_skipped() -> None:
    rankings = {"a": ["n1", "x", "n2"], "b": ["y"], "extra": ["y"]}
    gt = {"a": ["x"], "b": ["y"], "c": ["z"], "empty": []}
    m = score_rankings(rankings, gt, ks=(1,))
    # a: AP 0.5, b: AP 1, c (not submitted): 0; "empty" is skipped, "extra" ignored
    assert m["map"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    assert m["r1"] == pytest.approx(1 / 3)
    assert m["mrr"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)


def test_repeated_names_count_once() -> None:
    m = score_rankings({"q": ["x", "x", "y"]}, {"q": ["x", "y"]}, ks=(2,))
    # de-duplicated ranking is [x, y]: both relevant
    assert m["p2"] == pytest.approx(1.0) and m["map"] == pytest.approx(1.0)


def test_score_rankings_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="no query"):
        score_rankings({"q": ["x"]}, {"q": []})
    with pytest.raises(ValueError, match="ks"):
        score_rankings({"q": ["x"]}, {"q": ["x"]}, ks=(0,))


def test_per_query_metrics_checks_shapes() -> None:
    with pytest.raises(ValueError, match="n_relevant"):
        per_query_metrics(np.array([[True, True]]), np.array([1]))


def test_embedding_ties_break_by_gallery_index() -> None:
    q = np.array([[1.0, 0.0]])
    g = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # items 0 and 1 tie
    m = retrieval_metrics_from_embeddings(q, ["A"], g, ["B", "A", "A"], ks=(1, 5))
    # ranking [g0 (B), g1 (A), g2 (A)]
    assert m == pytest.approx({"r1": 0.0, "r5": 1.0, "map": (1 / 2 + 2 / 3) / 2})


def test_embedding_exclude_self() -> None:
    x = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    labels = np.array(["A", "B", "A"])
    m = retrieval_metrics_from_embeddings(x, labels, x, labels, exclude_self=True)
    # q0: [g1 (B), g2 (A)] -> AP 0.5; q1 has no other "B" (skipped); q2: [g1 (B), g0 (A)]
    assert m == pytest.approx({"r1": 0.0, "r5": 1.0, "map": 0.5})
    with pytest.raises(ValueError, match="exclude_self"):
        retrieval_metrics_from_embeddings(x, labels, x[:2], labels[:2], exclude_self=True)
    with pytest.raises(ValueError, match="q_labels"):
        retrieval_metrics_from_embeddings(x, labels[:2], x, labels)


def random_set(n: int, dim: int, n_labels: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    _, x, _, labels = clustered_unit_vectors(0, n, dim, n_labels, 1.5, seed, labels=True)
    return x, labels


def pml_accuracy(q, ql, g=None, gl=None) -> dict:
    import torch
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    calc = AccuracyCalculator(
        include=("precision_at_1", "mean_average_precision"), k=None,
        device=torch.device("cpu"),
    )
    if g is None:  # reference = query, self excluded by PML
        return calc.get_accuracy(q, ql)
    return calc.get_accuracy(q, ql, g, gl, ref_includes_query=False)


def test_matches_pytorch_metric_learning() -> None:
    q, ql = random_set(200, 16, 15, seed=0)
    g, gl = random_set(400, 16, 20, seed=1)  # labels 15..19 never queried
    ours = retrieval_metrics_from_embeddings(q, ql, g, gl)
    ref = pml_accuracy(q, ql, g, gl)
    assert ours["r1"] == pytest.approx(ref["precision_at_1"], abs=1e-9)
    assert ours["map"] == pytest.approx(ref["mean_average_precision"], abs=1e-9)
    assert 0.05 < ours["map"] < 0.95  # not a degenerate case


def test_matches_pytorch_metric_learning_with_self_excluded() -> None:
    x, labels = random_set(300, 16, 40, seed=2)
    ours = retrieval_metrics_from_embeddings(x, labels, x, labels, exclude_self=True)
    ref = pml_accuracy(x, labels)
    assert ours["r1"] == pytest.approx(ref["precision_at_1"], abs=1e-9)
    assert ours["map"] == pytest.approx(ref["mean_average_precision"], abs=1e-9)


def test_recall_at_5_against_a_loop() -> None:
    q, ql = random_set(120, 8, 10, seed=3)
    g, gl = random_set(150, 8, 10, seed=4)
    order = np.argsort(-(q.astype(np.float64) @ g.T), axis=1, kind="stable")
    expected = np.mean([(gl[order[i, :5]] == ql[i]).any() for i in range(len(q))])
    ours = retrieval_metrics_from_embeddings(q, ql, g, gl, ks=(1, 5))
    assert ours["r5"] == pytest.approx(expected)


def test_chunked_equals_single_block(monkeypatch) -> None:
    x, labels = random_set(257, 12, 30, seed=5)
    full = retrieval_metrics_from_embeddings(x, labels, x, labels, ks=(1, 5), exclude_self=True)
    monkeypatch.setattr(metrics_module, "_BLOCK_ELEMENTS", 7 * 257)  # 7 queries per block
    chunked = retrieval_metrics_from_embeddings(
        x, labels, x, labels, ks=(1, 5), exclude_self=True
    )
    assert chunked == pytest.approx(full, abs=1e-12)


def test_map_at_5_as_kaggle_defines_it_by_hand() -> None:
    predictions = {"a": ["x", "y", "z"],            # y at rank 2: 1/2
                   "b": ["y", "x"],                 # q never predicted: 0
                   "c": ["z", "w", "v", "u", "t", "x"],  # x at rank 6, beyond 5: 0
                   "d": ["x", "z", "y"],            # two labels: (1/1 + 2/3) / 2 = 5/6
                   "e": ["x", "x", "y"]}            # the repeat keeps its slot: y at rank 3, 1/3 (ml_metrics.apk)
    actual = {"a": ["y"], "b": ["q"], "c": ["x"], "d": ["x", "y"], "e": ["y"]}
    assert map_at_k(predictions, actual, 5) == pytest.approx((1 / 2 + 0 + 0 + 5 / 6 + 1 / 3) / 5)
    assert map_at_k({"a": ["y"]}, {"a": ["y"], "b": ["z"]}) == 0.5  # a query without a prediction scores 0
    with pytest.raises(ValueError, match="'b'"):
        map_at_k({"a": ["y"]}, {"a": ["y"], "b": []})


def test_mean_f1_by_hand() -> None:
    # {a,b} vs {a,b}: 1; {a} vs {a,c}: 2*1/3; nothing vs {d}: 0; repeats count once
    assert mean_f1({"1": ["a", "b", "b"], "2": ["a"]}, {"1": ["a", "b"], "2": ["a", "c"], "3": ["d"]}) == \
        pytest.approx((1 + 2 / 3 + 0) / 3)
