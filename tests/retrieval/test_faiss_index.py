"""FAISS index construction and search against exact numpy top-k."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from simsearch.retrieval.index import build_index, ivf_nlist, recommend_index, resolve_factory, search
from simsearch.utils.synthetic import clustered_unit_vectors


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def clustered(n: int, dim: int, seed: int, n_clusters: int = 40) -> np.ndarray:
    return clustered_unit_vectors(0, n, dim, n_clusters, 0.6, seed)[1]


def numpy_topk(q: np.ndarray, g: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    sims = q.astype(np.float64) @ g.T.astype(np.float64)
    ids = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, ids, 1), ids


def test_flat_equals_exact_numpy_topk() -> None:
    g = clustered(500, 32, seed=0)
    q = clustered(50, 32, seed=1)
    scores, ids = search(build_index(g, "Flat"), q, 10)
    ref_scores, ref_ids = numpy_topk(q, g, 10)
    assert ids.dtype == np.int64 and scores.dtype == np.float32
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)
    sims = q.astype(np.float64) @ g.T.astype(np.float64)
    # the item at each rank has the exact score of that rank, no item twice ...
    np.testing.assert_allclose(np.take_along_axis(sims, ids, 1), ref_scores, atol=1e-5)
    assert all(len(set(row)) == len(row) for row in ids.tolist())
    # ... so an id may differ from numpy's only at a tie: another gallery item has the same score
    for i, j in zip(*np.nonzero(ids != ref_ids)):
        assert np.sum(np.abs(sims[i] - ref_scores[i, j]) <= 1e-5) >= 2, (i, j)


def test_hnsw_recall_against_flat() -> None:
    g = clustered(2000, 32, seed=2)
    q = clustered(200, 32, seed=3)
    _, exact = search(build_index(g, "Flat"), q, 10)
    index = build_index(g, "HNSW32", ef_search=64)
    assert faiss.downcast_index(index).hnsw.efSearch == 64
    _, approx = search(index, q, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(approx, exact)])
    assert recall >= 0.9


def test_ivf_trains_and_is_exact_when_probing_every_list() -> None:
    g = clustered(2000, 16, seed=4)
    q = clustered(100, 16, seed=5)
    index = build_index(g, "IVF64,Flat", nprobe=64, seed=0)
    assert faiss.extract_index_ivf(index).nprobe == 64
    assert index.ntotal == 2000
    scores, ids = search(index, q, 5)
    ref_scores, _ = numpy_topk(q, g, 5)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)


def test_nprobe_is_clamped_to_the_number_of_lists() -> None:
    index = build_index(clustered(300, 8, seed=6), "IVF8,Flat", nprobe=50)
    assert faiss.extract_index_ivf(index).nprobe == 8


def test_search_clamps_k_to_index_size() -> None:
    g = clustered(7, 8, seed=7)
    scores, ids = search(build_index(g), g[:3], 100)
    assert ids.shape == (3, 7)
    assert (np.sort(ids, axis=1) == np.arange(7)).all()
    assert (ids[:, 0] == np.arange(3)).all()  # each vector is its own nearest


def test_bad_factory_string_is_named() -> None:
    with pytest.raises(ValueError, match="NotAnIndex42"):
        build_index(clustered(50, 8, seed=0), "NotAnIndex42")


def test_gallery_too_small_for_ivf_names_factory_and_sizes() -> None:
    with pytest.raises(ValueError, match=r"IVF64,Flat.*64.*30"):
        build_index(clustered(30, 8, seed=0), "IVF64,Flat")


def test_pq_training_failure_is_a_value_error() -> None:
    # PQ needs 256 training points per sub-quantiser; 100 cannot train it
    with pytest.raises(ValueError, match="IVF2,PQ4"):
        build_index(clustered(100, 8, seed=0), "IVF2,PQ4")


def test_bad_arrays() -> None:
    g = clustered(20, 8, seed=0)
    with pytest.raises(ValueError, match="emb"):
        build_index(g[0])
    index = build_index(g)
    with pytest.raises(ValueError, match="dimension"):
        search(index, g[:, :4], 3)
    with pytest.raises(ValueError, match="k must be"):
        search(index, g, 0)


@pytest.mark.parametrize("n,expected", [(1_000, "Flat"), (49_999, "Flat"), (50_000, "IVF1024,Flat"),
                                        (100_000, "IVF1024,Flat"), (1_000_000, "IVF4096,Flat")])
def test_auto_rule_by_gallery_size(n: int, expected: str) -> None:
    # nlist: the power of two nearest 4 sqrt(n): 4 * 223.6 = 894 -> 1024; 4 * 1000 = 4000 -> 4096
    assert recommend_index(n) == expected
    assert resolve_factory("auto", n) == expected
    assert resolve_factory("HNSW32", n) == "HNSW32"


def test_ivf_nlist_keeps_39_points_per_list() -> None:
    assert ivf_nlist(1_000) == 16  # nearest would be 128, but 1000 / 39 = 25.6 -> 16
    assert all(n / ivf_nlist(n) >= 39 for n in (40, 500, 5_000, 60_000))


def test_auto_builds_an_exact_index_on_a_small_gallery() -> None:
    rng = np.random.default_rng(0)
    g = rng.standard_normal((300, 8)).astype(np.float32)
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    index = build_index(g, "auto")
    assert isinstance(faiss.downcast_index(index), faiss.IndexFlat)
    scores, ids = search(index, g[:5], 1)
    assert (ids[:, 0] == np.arange(5)).all()
