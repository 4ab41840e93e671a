"""Sparse k-reciprocal re-ranking against the dense, paper-literal reference."""

from __future__ import annotations

import numpy as np
import pytest

from simsearch.benchmarks.dense_reference import dense_k_reciprocal_rerank, original_distance
from simsearch.retrieval.index import build_index
from simsearch.retrieval.rerank import NORMS, k_reciprocal_rerank, stacked_neighbours
from simsearch.utils.synthetic import clustered_unit_vectors


def clustered(nq: int, ng: int, dim: int, seed: int, n_clusters: int = 10, noise: float = 0.5):
    """Unit vectors scattered around shared cluster centres (queries and gallery alike)."""
    return clustered_unit_vectors(nq, ng, dim, n_clusters, noise, seed)


def assert_same_ranking(dense: np.ndarray, idx: np.ndarray, dist: np.ndarray, top: int = 10):
    """Our top-`top` equals the dense argsort, up to swaps of equal dense distances."""
    ref_sorted = np.sort(dense, axis=1)[:, :top]
    ours_under_ref = np.take_along_axis(dense, idx[:, :top], axis=1)
    # the items we rank at position r have the dense distance of the dense rank-r item
    np.testing.assert_allclose(ours_under_ref, ref_sorted, rtol=0, atol=1e-6)
    np.testing.assert_allclose(dist[:, :top], ref_sorted, rtol=0, atol=1e-5)
    ref_idx = np.argsort(dense, axis=1, kind="stable")[:, :top]
    differs = ref_idx != idx[:, :top]
    gaps = np.abs(np.take_along_axis(dense, ref_idx, 1) - ours_under_ref)
    assert (gaps[differs] < 1e-6).all()  # any disagreement is an exact (float) tie


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("k1,k2", [(20, 6), (7, 3), (5, 1)])
def test_matches_dense_reference(seed: int, k1: int, k2: int, norm: str) -> None:
    q, g = clustered(40, 120, 16, seed)
    dense = dense_k_reciprocal_rerank(q, g, k1=k1, k2=k2, lambda_value=0.3, norm=norm)
    idx, dist = k_reciprocal_rerank(q, g, k1=k1, k2=k2, lambda_value=0.3, num_candidates=120, norm=norm)
    assert idx.shape == dist.shape == (40, 120)
    assert idx.dtype == np.int64
    assert_same_ranking(dense, idx, dist)
    # every distance (not only the top 10) agrees with the reference
    np.testing.assert_allclose(dist, np.take_along_axis(dense, idx, 1), rtol=0, atol=1e-5)
    assert (np.sort(idx, axis=1) == np.arange(120)).all()  # a permutation of the gallery


# three unit vectors: x0 = e1, x1 = e2, x2 at 45 degrees between them. Squared distances:
# |x0 - x1|^2 = 2, |x0 - x2|^2 = |x1 - x2|^2 = 2 - sqrt(2); column maxima 2, 2, 2 - sqrt(2).
THREE = np.array([[1.0, 0.0], [0.0, 1.0], [np.sqrt(0.5), np.sqrt(0.5)]], dtype=np.float32)
SQ = 2.0 - np.sqrt(2.0)


def test_column_max_by_hand_on_three_vectors() -> None:
    # authors' code: each column over its maximum, then transposed: row i over item i's maximum
    expected = np.array([[0.0, 2.0 / 2.0, SQ / 2.0],
                         [2.0 / 2.0, 0.0, SQ / 2.0],
                         [SQ / SQ, SQ / SQ, 0.0]])
    np.testing.assert_allclose(original_distance(THREE[:1], THREE[1:], "column_max"), expected, atol=1e-6)
    np.testing.assert_allclose(original_distance(THREE[:1], THREE[1:], "fixed"),
                               np.array([[0, 2, SQ], [2, 0, SQ], [SQ, SQ, 0]]) / 4.0, atol=1e-6)
    # the sparse path's halved maxima, 1 - min cos, from the index search of -x (x = [q; g] = THREE)
    neigh, scale = stacked_neighbours(THREE[:1], THREE[1:], build_index(THREE[1:], "Flat"), 3, "column_max")
    np.testing.assert_allclose(scale, [1.0, 1.0, SQ / 2.0], atol=1e-6)
    assert neigh[:, 0].tolist() == [0, 1, 2]  # each item is its own nearest, in stacked ids
    _, fixed = stacked_neighbours(THREE[:1], THREE[1:], build_index(THREE[1:], "Flat"), 3, "fixed")
    assert (fixed == 2.0).all()


@pytest.mark.parametrize("query,gallery,expected", [
    (0, [1, 2], [SQ / 2.0, 1.0]),  # the query's own maximum (2, towards x1) divides both
    (2, [0, 1], [1.0, 1.0]),  # x2's maximum is its distance to either
])
def test_lambda_one_column_max_by_hand(query: int, gallery: list[int], expected: list[float]) -> None:
    _, dist = k_reciprocal_rerank(THREE[[query]], THREE[gallery], k1=2, k2=1, lambda_value=1.0,
                                  num_candidates=2, norm="column_max")
    np.testing.assert_allclose(dist[0], expected, atol=1e-6)


def test_the_norms_rank_differently() -> None:
    q, g = clustered(40, 120, 16, seed=0, noise=0.8)
    fixed, _ = k_reciprocal_rerank(q, g, num_candidates=120, norm="fixed")
    column_max, _ = k_reciprocal_rerank(q, g, num_candidates=120, norm="column_max")
    assert (fixed[:, :10] != column_max[:, :10]).any(axis=1).sum() >= 5


def test_reranking_changes_the_cosine_order() -> None:
    q, g = clustered(40, 120, 16, seed=0)
    idx, _ = k_reciprocal_rerank(q, g, num_candidates=120)
    cosine_order = np.argsort(-(q @ g.T), axis=1, kind="stable")
    assert (idx[:, :10] != cosine_order[:, :10]).any(axis=1).sum() >= 5


@pytest.mark.parametrize("norm", NORMS)
def test_lambda_one_is_the_original_distance_order(norm: str) -> None:
    q, g = clustered(30, 90, 8, seed=3)
    idx, dist = k_reciprocal_rerank(q, g, lambda_value=1.0, num_candidates=90, norm=norm)
    x = np.concatenate([q, g]).astype(np.float64)
    cos = x[:30] @ x[30:].T
    # fixed: squared distance / 4; column_max: over the query's largest one, gallery and queries alike
    divisor = 4.0 if norm == "fixed" else (2.0 - 2.0 * (x[:30] @ x.T)).max(axis=1, keepdims=True)
    expected = np.take_along_axis((2.0 - 2.0 * cos) / divisor, idx, axis=1)
    np.testing.assert_allclose(dist, expected, atol=1e-6)
    assert (np.diff(dist, axis=1) >= 0).all()
    assert (idx[:, 0] == cos.argmax(axis=1)).all()


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("seed", [4, 5])
def test_top_candidates_equal_the_dense_top_over_the_whole_gallery(seed: int, norm: str) -> None:
    q, g = clustered(30, 300, 16, seed=seed, n_clusters=6, noise=0.8)
    dense = dense_k_reciprocal_rerank(q, g, k1=20, k2=6, lambda_value=0.3, norm=norm)
    idx, dist = k_reciprocal_rerank(q, g, num_candidates=15, norm=norm)
    assert idx.shape == dist.shape == (30, 15)
    assert_same_ranking(dense, idx, dist, top=15)
    # the case that needs more than the cosine top-15: some dense top-15 item lies outside it
    nearest = np.argsort(-(q @ g.T), axis=1, kind="stable")[:, :15]
    dense_top = np.argsort(dense, axis=1, kind="stable")[:, :15]
    assert any(set(d) - set(n) for d, n in zip(dense_top.tolist(), nearest.tolist()))


@pytest.mark.parametrize("norm", NORMS)
def test_num_candidates_larger_than_gallery_is_clamped(norm: str) -> None:
    q, g = clustered(5, 12, 4, seed=5)
    idx, dist = k_reciprocal_rerank(q, g, k1=3, k2=2, num_candidates=100, norm=norm)
    assert idx.shape == (5, 12)
    dense = dense_k_reciprocal_rerank(q, g, k1=3, k2=2, lambda_value=0.3, norm=norm)
    np.testing.assert_allclose(dist, np.take_along_axis(dense, idx, 1), atol=1e-5)


@pytest.mark.parametrize(
    "kwargs,name",
    [
        ({"k1": 0}, "k1"),
        ({"k2": 0}, "k2"),
        ({"num_candidates": 0}, "num_candidates"),
        ({"lambda_value": 1.5}, "lambda_value"),
        ({"norm": "row_max"}, "norm"),
    ],
)
def test_bad_parameters_name_the_argument(kwargs: dict, name: str) -> None:
    q, g = clustered(4, 10, 4, seed=0)
    with pytest.raises(ValueError, match=name):
        k_reciprocal_rerank(q, g, **kwargs)


def test_bad_arrays_name_the_argument() -> None:
    q, g = clustered(4, 10, 4, seed=0)
    with pytest.raises(ValueError, match="q_emb and g_emb"):
        k_reciprocal_rerank(q, g[:, :3])
    with pytest.raises(ValueError, match="q_emb"):
        k_reciprocal_rerank(q[0], g)
    with pytest.raises(ValueError, match="g_emb"):
        k_reciprocal_rerank(q, g[None])
    with pytest.raises(ValueError, match="g_emb.*L2-normalised"):
        k_reciprocal_rerank(q, 2 * g)


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("nq,ng,k1,k2", [(1, 1, 20, 6), (2, 5, 3, 10), (3, 2, 1, 1)])
def test_tiny_sets_where_k_exceeds_the_set(nq: int, ng: int, k1: int, k2: int, norm: str) -> None:
    q, g = clustered(nq, ng, 4, seed=nq + ng, n_clusters=2)
    idx, dist = k_reciprocal_rerank(q, g, k1=k1, k2=k2, num_candidates=ng, norm=norm)
    dense = dense_k_reciprocal_rerank(q, g, k1=k1, k2=k2, lambda_value=0.3, norm=norm)
    np.testing.assert_allclose(dist, np.take_along_axis(dense, idx, 1), atol=1e-5)
