"""Fusing rankings and scores: several crops of one query, or a second score over a candidate list.

Pure functions over arrays, shared by multi-crop queries (rank fusion), text-side expansion and
the coarse-to-fine second stage (score fusion over each query's first-stage candidates).
Ties are broken deterministically: by the gallery id for rank fusion, by the first-stage position
for score fusion.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["FUSIONS", "candidate_cosines", "check_rescoring", "fuse_per_query", "max_fusion",
           "reciprocal_rank_fusion", "rescore_head"]

FUSIONS = ("rrf", "max")


def check_rescoring(section: str, weight: float, candidates: int) -> None:
    """The options every re-scoring stage shares (coarse-to-fine, text fusion): a weight in [0, 1]
    for the second score and at least one first-stage candidate; errors name ``section.key``."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"{section}.weight must be in [0, 1], got {weight}")
    if candidates < 1:
        raise ValueError(f"{section}.candidates must be >= 1, got {candidates}")


def _sorted(scores: dict[int, float]) -> tuple[np.ndarray, np.ndarray]:
    """(ids, scores), best first, ties by ascending id."""
    if not scores:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    ids = np.fromiter(scores.keys(), dtype=np.int64, count=len(scores))
    vals = np.fromiter(scores.values(), dtype=np.float64, count=len(scores))
    order = np.lexsort((ids, -vals))
    return ids[order], vals[order].astype(np.float32)


def reciprocal_rank_fusion(rankings: Sequence[Sequence[int]], k: float = 60.0) -> tuple[np.ndarray, np.ndarray]:
    """Reciprocal rank fusion (Cormack, Clarke and Buettcher, SIGIR 2009).

    score(d) = sum over the rankings that hold d of 1 / (k + rank(d)), rank 1-based. Negative ids
    (FAISS padding) are skipped. Returns (ids, scores) best first.
    """
    if k < 0:
        raise ValueError(f"infer.multicrop.rrf_k must be >= 0, got {k}")
    fused: dict[int, float] = {}
    for ranking in rankings:
        for rank, d in enumerate(ranking, 1):
            if d >= 0:
                fused[int(d)] = fused.get(int(d), 0.0) + 1.0 / (k + rank)
    return _sorted(fused)


def max_fusion(rankings: Sequence[Sequence[int]], scores: Sequence[Sequence[float]]
               ) -> tuple[np.ndarray, np.ndarray]:
    """Each item keeps its best score over the rankings (a crop that matches well is enough)."""
    fused: dict[int, float] = {}
    for ranking, row in zip(rankings, scores):
        for d, s in zip(ranking, row):
            if d >= 0 and (int(d) not in fused or s > fused[int(d)]):
                fused[int(d)] = float(s)
    return _sorted(fused)


def fuse_per_query(ids: np.ndarray, scores: np.ndarray, owner: np.ndarray, n_queries: int, method: str,
                   top_k: int, rrf_k: float = 60.0) -> tuple[np.ndarray, np.ndarray]:
    """Fuse the rows of ``ids``/``scores`` (one per crop) that belong to the same query.

    ``owner[i]`` is the query of row i. Returns (n_queries, top_k) arrays, padded with id -1 and
    score -inf when a query's crops found fewer than ``top_k`` items.
    """
    if method not in FUSIONS:
        raise ValueError(f"infer.multicrop.fusion: '{method}' must be one of {', '.join(FUSIONS)}")
    out_ids = np.full((n_queries, top_k), -1, dtype=np.int64)
    out_scores = np.full((n_queries, top_k), -np.inf, dtype=np.float32)
    owner = np.asarray(owner)
    for q in range(n_queries):
        rows = np.flatnonzero(owner == q)
        if rows.size == 0:
            raise ValueError(f"query row {q} has no crop to search with")
        if method == "rrf":
            f_ids, f_scores = reciprocal_rank_fusion(ids[rows], rrf_k)
        else:
            f_ids, f_scores = max_fusion(ids[rows], scores[rows])
        n = min(top_k, f_ids.size)
        out_ids[q, :n], out_scores[q, :n] = f_ids[:n], f_scores[:n]
    return out_ids, out_scores


def _minmax(x: np.ndarray) -> np.ndarray:
    """Scale to [0, 1] over the row (all zeros when the row is constant)."""
    lo, hi = float(np.min(x)), float(np.max(x))
    return (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)


def rescore_head(ids: np.ndarray, scores: np.ndarray, second: np.ndarray, weight: float
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Re-order each row's first ``second.shape[1]`` items by (1 - w) * first + w * second, each
    min-max normalised over those items (CombSUM with min-max normalisation, Fox and Shaw 1994).

    Why normalise: the first-stage score may be a cosine, 1 - a k-reciprocal distance or a tiny
    RRF score, so raw sums would let one side dominate whatever ``w`` says; an increasing map of
    the first score (the same model twice) leaves the order unchanged.
    ``second[i, j]`` scores ``ids[i, j]`` (NaN where ``ids`` is padding). Positions after the head
    keep their order, and their scores are shifted to stay below the head's lowest fused score, so
    scores still decrease along a row. Ties keep the first-stage order (stable sort).
    """
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"fusion weight must be in [0, 1], got {weight}")
    n = second.shape[1]
    if n > ids.shape[1]:
        raise ValueError(f"{n} second-stage scores per query but only {ids.shape[1]} candidates")
    out_ids, out_scores = ids.copy(), scores.astype(np.float32).copy()
    for i in range(ids.shape[0]):
        valid = np.flatnonzero(ids[i, :n] >= 0)  # FAISS pads with -1 at the end only
        if valid.size == 0:
            continue
        first = _minmax(scores[i, valid].astype(np.float64))
        fused = (1.0 - weight) * first + weight * _minmax(second[i, valid].astype(np.float64))
        order = np.argsort(-fused, kind="stable")
        out_ids[i, : valid.size] = ids[i, valid[order]]
        out_scores[i, : valid.size] = fused[order]
        tail = np.arange(n, ids.shape[1])
        tail = tail[ids[i, tail] >= 0]
        if tail.size:
            shift = max(0.0, float(scores[i, tail].max()) - float(fused.min()) + 1.0)
            out_scores[i, tail] = scores[i, tail] - shift
    return out_ids, out_scores


def candidate_cosines(q: np.ndarray, g: np.ndarray, ids: np.ndarray, n: int) -> np.ndarray:
    """(Nq, n) dot products of each query row with its first ``n`` candidates; NaN for padding."""
    head = ids[:, :n]
    safe = np.where(head >= 0, head, 0)
    sims = np.einsum("qd,qnd->qn", q.astype(np.float32), g.astype(np.float32)[safe])
    return np.where(head >= 0, sims, np.nan)
