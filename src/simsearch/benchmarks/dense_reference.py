"""Dense reference of k-reciprocal re-ranking, for tests and benchmarks only.

Follows Zhong, Zheng, Cao, Li, "Re-ranking Person Re-identification with k-reciprocal
Encoding", CVPR 2017, literally: a full (N, N) distance matrix over queries + gallery,
k-reciprocal sets R(p, k1), the 1/2-k1 expansion, Gaussian-kernel vectors V, local query
expansion over k2 neighbours, Jaccard distance and the lambda mix. It is quadratic in memory
on purpose: it is the oracle the sparse library version (``simsearch.retrieval.rerank``) is
checked against, and the baseline its benchmark compares with.

Original distance, ``norm`` (as ``infer.rerank_norm``): the squared L2 distance over the whole set
- ``column_max``: as the authors' re_ranking.py (github.com/zhunzhong07/person-re-ranking, copied
  by fast-reid): ``original_dist = np.transpose(original_dist / np.max(original_dist, axis=0))``,
  each column divided by its maximum, then transposed; written here the same way, dense;
- ``fixed``: divided by 4, the largest squared distance of unit vectors: ``(1 - cos) / 2``.
"""

from __future__ import annotations

import numpy as np

#: (N, N) arrays this reference holds at its peak, with their item sizes in bytes:
#: distances (float64), ranks (int64), V (float64), V after query expansion (float64).
DENSE_MATRIX_ITEMSIZES = (8, 8, 8, 8)


def dense_memory_lower_bound(n_total: int) -> int:
    """Bytes of the N x N matrices the dense reference needs for ``n_total`` items."""
    return int(n_total) ** 2 * sum(DENSE_MATRIX_ITEMSIZES)


def original_distance(q_emb: np.ndarray, g_emb: np.ndarray, norm: str = "fixed") -> np.ndarray:
    """(N, N) normalised squared L2 distances over the concatenation [queries; gallery]."""
    x = np.concatenate([q_emb, g_emb]).astype(np.float64)
    squared = np.clip(2.0 - 2.0 * (x @ x.T), 0.0, 4.0)
    if norm == "fixed":
        return squared / 4.0
    if norm == "column_max":
        return np.transpose(squared / np.max(squared, axis=0))
    raise ValueError(f"norm must be column_max or fixed, got {norm!r}")


def k_reciprocal_set(rank: np.ndarray, i: int, k: int) -> np.ndarray:
    """R(i, k): items among i's k+1 nearest (itself included) that have i among theirs."""
    forward = rank[i, : k + 1]
    backward = rank[forward, : k + 1]
    return forward[(backward == i).any(axis=1)]


def dense_k_reciprocal_rerank(
    q_emb: np.ndarray,
    g_emb: np.ndarray,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    norm: str = "fixed",
) -> np.ndarray:
    """Re-ranked (Nq, Ng) distance matrix, smaller is better."""
    nq = len(q_emb)
    dist = original_distance(q_emb, g_emb, norm)
    n = dist.shape[0]
    rank = np.argsort(dist, axis=1, kind="stable")
    half = int(round(k1 / 2))

    v = np.zeros((n, n))
    for i in range(n):
        r = k_reciprocal_set(rank, i, k1)
        expanded = set(r.tolist())
        for c in r:
            rc = k_reciprocal_set(rank, c, half)
            # add R(c, k1/2) when more than 2/3 of it lies in R(i, k1)
            if 3 * len(np.intersect1d(rc, r)) > 2 * len(rc):
                expanded.update(rc.tolist())
        members = np.array(sorted(expanded))
        weights = np.exp(-dist[i, members])
        v[i, members] = weights / weights.sum()

    if k2 > 1:  # local query expansion: mean of the V vectors of the k2 nearest items
        v_qe = np.zeros_like(v)
        for i in range(n):
            v_qe[i] = v[rank[i, :k2]].mean(axis=0)
        v = v_qe

    jaccard = np.empty((nq, n - nq))
    gallery_v = v[nq:]
    for i in range(nq):
        support = np.flatnonzero(v[i])
        inter = np.minimum(gallery_v[:, support], v[i, support]).sum(axis=1)
        union = v[i].sum() + gallery_v.sum(axis=1) - inter  # sum of element-wise maxima
        jaccard[i] = 1.0 - inter / union
    return (1.0 - lambda_value) * jaccard + lambda_value * dist[:nq, nq:]
