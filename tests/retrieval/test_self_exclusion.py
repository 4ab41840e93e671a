"""retrieve(self_ids=...): a query that is also a gallery item is never ranked for itself, and rows keep top_k."""
from __future__ import annotations

import numpy as np

from simsearch.retrieval.pipeline import RetrievalOptions, drop_self, retrieve


def test_drop_self_keeps_order_and_width() -> None:
    ids = np.array([[3, 1, 2], [0, 2, 1]])
    scores = np.array([[0.9, 0.8, 0.7], [0.6, 0.5, 0.4]], dtype=np.float32)
    out_ids, out_scores = drop_self(ids, scores, np.array([1, -1]), k=2)
    assert out_ids.tolist() == [[3, 2], [0, 2]]
    np.testing.assert_allclose(out_scores, [[0.9, 0.7], [0.6, 0.5]])
    # the whole gallery was searched: the row ends in FAISS-style padding
    ids, scores = drop_self(np.array([[1, 0]]), np.array([[0.9, 0.3]], dtype=np.float32), np.array([1]), k=2)
    assert ids.tolist() == [[0, -1]] and scores[0, 0] == np.float32(0.3) and scores[0, 1] == -np.inf


def _unit(rng: np.random.Generator, n: int, d: int = 8) -> np.ndarray:
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_retrieve_leaves_self_out_without_losing_top_k() -> None:
    rng = np.random.default_rng(0)
    g = _unit(rng, 12)
    q = g[[4, 7, 0]] + 0.0  # the first two queries are gallery items 4 and 7; the third is item 0 too
    self_ids = np.array([4, 7, -1])
    opts = RetrievalOptions(index="Flat", top_k=5, rerank=False)
    ids, scores = retrieve(q, g, opts, self_ids=self_ids)
    order = np.argsort(-(q @ g.T), axis=1, kind="stable")  # the exact cosine ranking, by hand
    expected = [[j for j in order[i] if j != self_ids[i]][:5] for i in range(3)]
    assert ids.tolist() == expected and ids.shape == (3, 5)
    assert ids[2, 0] == 0  # a query without self_ids keeps its own item
    assert np.all(np.diff(scores, axis=1) <= 0)
    reranked, _ = retrieve(q, g, RetrievalOptions(index="Flat", top_k=5, k1=4, k2=2), self_ids=self_ids)
    assert reranked.shape == (3, 5) and 4 not in reranked[0] and 7 not in reranked[1]
    everything, _ = retrieve(q, g, RetrievalOptions(index="Flat", top_k="all", rerank=False), self_ids=self_ids)
    assert (everything[:2, -1] == -1).all() and sorted(everything[0, :-1]) == [j for j in range(12) if j != 4]
    assert everything.shape == (3, 12) and everything[2, -1] >= 0  # query 2 keeps the whole gallery
    alone, _ = retrieve(q[:2], g, RetrievalOptions(index="Flat", top_k="all", rerank=False), self_ids=self_ids[:2])
    assert alone.shape == (2, 11) and (alone >= 0).all()  # every query in the gallery: one column less
