"""Retrieval metrics: from named rankings (scoring a submission) or from embeddings
(the validation loop). Both reduce to a boolean hit matrix and share one implementation.

Definitions (per query, then averaged over queries with at least one relevant item; queries
with none are skipped, as in pytorch-metric-learning's AccuracyCalculator):

- ``r{k}``: Recall@k as top-k accuracy: 1 if any relevant item is in the top k.
- ``p{k}``: precision@k: relevant items in the top k divided by k (also when the list is
  shorter than k).
- ``map``: average precision over the whole ranking: sum of precision@rank at each hit divided
  by the total number of relevant items (unretrieved ones count as misses).
- ``map{k}``: AP@k: the same sum over hits within the top k, divided by min(k, n_relevant).
- ``mrr``: 1 / rank of the first relevant item (0 if none is retrieved).
- ``ndcg{k}``: binary gains, 1/log2(rank + 1) discount, ideal DCG from min(k, n_relevant)
  relevant items at the top (Järvelin & Kekäläinen, ACM TOIS 2002).

Metric keys have no "@" so they match the config's ``score.primary`` values (map, r1, ...).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

__all__ = [
    "map_at_k",
    "mean_f1",
    "per_query_metrics",
    "retrieval_metrics_from_embeddings",
    "score_hits",
    "score_rankings",
]

_BLOCK_ELEMENTS = 1 << 22  # query x gallery similarities held at once by the embedding version


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    ks = tuple(ks)
    if not ks or any(isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1
                     for k in ks):
        raise ValueError(f"ks must be a non-empty sequence of integers >= 1, got {ks!r}")
    return tuple(int(k) for k in ks)


def per_query_metrics(
    hits: np.ndarray, n_relevant: np.ndarray, ks: Sequence[int] = (1, 5, 10)
) -> dict[str, np.ndarray]:
    """Per-query metrics from ``hits`` (Nq, L) bool, row = relevance in rank order, and
    ``n_relevant`` (Nq,) > 0, the number of relevant items per query (>= hits per row)."""
    ks = _check_ks(ks)
    hits = np.asarray(hits, dtype=bool)
    n_rel = np.asarray(n_relevant, dtype=np.float64)
    if hits.ndim != 2 or n_rel.shape != (hits.shape[0],):
        raise ValueError(f"hits must be (Nq, L) and n_relevant (Nq,), got {hits.shape}, "
                         f"{n_rel.shape}")
    if (n_rel < 1).any() or (hits.sum(axis=1) > n_rel).any():
        raise ValueError("n_relevant must be >= 1 and >= the number of hits in each row")
    width = max(hits.shape[1], max(ks))
    if width > hits.shape[1]:  # lists shorter than k: pad with misses
        hits = np.pad(hits, ((0, 0), (0, width - hits.shape[1])))
    ranks = np.arange(1, width + 1, dtype=np.float64)
    precision_at_hit = np.where(hits, np.cumsum(hits, axis=1) / ranks, 0.0)
    discount = 1.0 / np.log2(ranks + 1.0)
    ideal_cum = np.cumsum(discount)

    out: dict[str, np.ndarray] = {"map": precision_at_hit.sum(axis=1) / n_rel}
    first = np.argmax(hits, axis=1)
    out["mrr"] = np.where(hits.any(axis=1), 1.0 / (first + 1.0), 0.0)
    for k in ks:
        top = hits[:, :k]
        out[f"r{k}"] = top.any(axis=1).astype(np.float64)
        out[f"p{k}"] = top.sum(axis=1) / k
        out[f"map{k}"] = precision_at_hit[:, :k].sum(axis=1) / np.minimum(k, n_rel)
        ideal = ideal_cum[np.minimum(k, n_rel).astype(np.int64) - 1]
        out[f"ndcg{k}"] = (top * discount[:k]).sum(axis=1) / ideal
    return out


def score_hits(
    hits: np.ndarray, n_relevant: np.ndarray, ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """Mean of :func:`per_query_metrics` over the queries."""
    return {key: float(v.mean()) for key, v in per_query_metrics(hits, n_relevant, ks).items()}


def score_rankings(
    rankings: Mapping[str, Sequence[str]],
    ground_truth: Mapping[str, Sequence[str]],
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, float]:
    """Score named rankings against ground truth ({query: relevant gallery names}).

    Ground-truth queries absent from ``rankings`` score 0; queries only in ``rankings`` are
    ignored (validate the submission first to report both); repeated names in a ranking
    count once, at their first position.
    """
    ks = _check_ks(ks)
    queries = sorted(q for q, rel in ground_truth.items() if len(rel) > 0)
    if not queries:
        raise ValueError("ground truth has no query with at least one relevant item")
    width = max([max(ks)] + [len(rankings.get(q, ())) for q in queries])
    hits = np.zeros((len(queries), width), dtype=bool)
    n_rel = np.empty(len(queries), dtype=np.int64)
    for i, query in enumerate(queries):
        relevant = set(ground_truth[query])
        n_rel[i] = len(relevant)
        ranked = list(dict.fromkeys(rankings.get(query, ())))  # de-duplicate, keep order
        hits[i, : len(ranked)] = [name in relevant for name in ranked]
    return score_hits(hits, n_rel, ks)


def map_at_k(
    predictions: Mapping[str, Sequence[str]],
    ground_truth: Mapping[str, Sequence[str]],
    k: int = 5,
) -> float:
    """Mean average precision at ``k`` as Kaggle defines it (MAP@5 of Humpback Whale Identification,
    https://www.kaggle.com/c/humpback-whale-identification/overview/evaluation):

        MAP@k = 1/U * sum over queries u of  sum_{i=1..min(n, k)} P(i) rel(i) / min(k, |actual_u|)

    with P(i) the precision at cut-off i and rel(i) 1 when prediction i is a correct label seen for the
    first time (Kaggle's ``ml_metrics.apk``). With one true label per query a query scores 1 / rank of
    that label in its first k predictions, 0 when absent. The sums are :func:`per_query_metrics`'
    ``map{k}``; unlike :func:`score_rankings`, a repeated prediction keeps its position (as in ``apk``)
    instead of being dropped. Every ground-truth query must have a label.
    """
    k = _check_ks((k,))[0]
    queries = sorted(ground_truth)
    empty = [q for q in queries if not ground_truth[q]]
    if not queries or empty:
        raise ValueError(f"MAP@{k}: every query needs at least one true label; none for {empty[:5]}")
    hits = np.zeros((len(queries), k), dtype=bool)
    for i, query in enumerate(queries):
        actual, seen = set(ground_truth[query]), set()
        for j, label in enumerate(list(predictions.get(query, ()))[:k]):
            hits[i, j] = label in actual and label not in seen  # a repeat keeps its slot, scores nothing
            seen.add(label)
    n_rel = np.array([len(set(ground_truth[q])) for q in queries])
    return float(per_query_metrics(hits, n_rel, ks=(k,))[f"map{k}"].mean())


def mean_f1(predictions: Mapping[str, Sequence[str]], ground_truth: Mapping[str, Sequence[str]]) -> float:
    """Mean over ground-truth queries of the F1 score of the predicted set against the true set,
    2 |P & A| / (|P| + |A|) (the metric of Shopee Price Match Guarantee, Kaggle 2021); a query with
    no prediction scores 0 (1 when its true set is empty too), repeated predictions count once."""
    if not ground_truth:
        raise ValueError("ground truth has no query")
    total = 0.0
    for query, actual in ground_truth.items():
        a, p = set(actual), set(predictions.get(query, ()))
        total += 2.0 * len(a & p) / (len(a) + len(p)) if a or p else 1.0
    return total / len(ground_truth)


def _check_embeddings(
    q_emb: np.ndarray, q_labels: np.ndarray, g_emb: np.ndarray, g_labels: np.ndarray,
    exclude_self: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    q, g = np.asarray(q_emb, dtype=np.float32), np.asarray(g_emb, dtype=np.float32)
    ql, gl = np.asarray(q_labels), np.asarray(g_labels)
    if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1]:
        raise ValueError(f"q_emb and g_emb must be 2-D with equal widths, got {q.shape}, "
                         f"{g.shape}")
    if ql.shape != (len(q),) or gl.shape != (len(g),):
        raise ValueError(f"q_labels {ql.shape} / g_labels {gl.shape} must be 1-D and match "
                         f"q_emb ({len(q)}) / g_emb ({len(g)})")
    if exclude_self and len(q) != len(g):
        raise ValueError("exclude_self needs the query set to be the gallery set "
                         f"(same rows), got {len(q)} queries and {len(g)} gallery items")
    return q, ql, g, gl


def retrieval_metrics_from_embeddings(
    q_emb: np.ndarray,
    q_labels: np.ndarray,
    g_emb: np.ndarray,
    g_labels: np.ndarray,
    ks: Sequence[int] = (1, 5),
    exclude_self: bool = False,
) -> dict[str, float]:
    """Recall@k (``r{k}``) and full-ranking mAP (``map``) of cosine retrieval by label.

    Relevant = same label. ``exclude_self`` (query set == gallery set) removes item i from
    query i's gallery. Gallery items are ranked by inner product, ties by gallery index;
    queries without relevant items are skipped. Memory is bounded by processing blocks of
    queries. Returns plain floats keyed ``r1``, ``r5`` (one per k) and ``map``.
    """
    ks = _check_ks(ks)
    q, ql, g, gl = _check_embeddings(q_emb, q_labels, g_emb, g_labels, exclude_self)
    block = max(1, _BLOCK_ELEMENTS // max(1, len(g)))
    sums = {f"r{k}": 0.0 for k in ks} | {"map": 0.0}
    counted = 0
    for s in range(0, len(q), block):
        sims = q[s : s + block] @ g.T
        relevant = ql[s : s + block, None] == gl[None, :]
        if exclude_self:
            rows = np.arange(len(sims))
            sims[rows, rows + s] = -np.inf
            relevant[rows, rows + s] = False
        n_rel = relevant.sum(axis=1)
        keep = n_rel > 0
        if not keep.any():
            continue
        order = np.argsort(-sims[keep], axis=1, kind="stable")
        hits = np.take_along_axis(relevant[keep], order, axis=1)
        per_query = per_query_metrics(hits, n_rel[keep], ks)
        for key in sums:
            sums[key] += float(per_query[key].sum())
        counted += int(keep.sum())
    if counted == 0:
        raise ValueError("no query has a relevant gallery item (same label); cannot score")
    return {key: total / counted for key, total in sums.items()}
