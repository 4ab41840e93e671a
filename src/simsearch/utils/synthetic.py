"""Synthetic retrieval embeddings for the tests and the benchmarks (one generator for both)."""
from __future__ import annotations

import numpy as np

__all__ = ["clustered_unit_vectors"]


def clustered_unit_vectors(nq: int, ng: int, dim: int, n_clusters: int, noise: float, seed: int,
                           labels: bool = False) -> tuple[np.ndarray, ...]:
    """Queries and gallery drawn around shared random centres, L2-normalised float32: (q, g), or
    (q, g, q_labels, g_labels) with ``labels``.

    Retrieval embeddings cluster by class; uniform random vectors have no near neighbours
    and would flatter approximate indexes and re-ranking alike. Built in chunks so a 1M x 512
    gallery needs its own 2 GB and little more.
    """
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, dim), dtype=np.float32)

    def points(n: int) -> tuple[np.ndarray, np.ndarray]:
        lab = rng.integers(0, n_clusters, n)
        out = np.empty((n, dim), dtype=np.float32)
        for s in range(0, n, 1 << 16):
            e = min(n, s + (1 << 16))
            x = centres[lab[s:e]]
            x += noise * rng.standard_normal((e - s, dim), dtype=np.float32)
            out[s:e] = x / np.linalg.norm(x, axis=1, keepdims=True)
        return out, lab

    (q, ql), (g, gl) = points(nq), points(ng)
    return (q, g, ql, gl) if labels else (q, g)
