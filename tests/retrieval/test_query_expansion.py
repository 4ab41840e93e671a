"""Query expansion / DBA on hand-computed 2-D and 3-D examples."""

from __future__ import annotations

import numpy as np
import pytest

from simsearch.retrieval import query_expansion as qe_module
from simsearch.retrieval.query_expansion import (
    alpha_query_expansion,
    average_query_expansion,
    database_augmentation,
)

S3 = np.sqrt(3.0) / 2.0  # cos 30 degrees
# gallery: 30 degrees, 90 degrees, 180 degrees; query at 0 degrees (sims 0.866, 0, -1)
G2 = np.array([[S3, 0.5], [0.0, 1.0], [-1.0, 0.0]], dtype=np.float32)
Q2 = np.array([[1.0, 0.0]], dtype=np.float32)


def unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def test_aqe_one_neighbour_bisects_the_angle() -> None:
    out = average_query_expansion(Q2, G2, k=1)
    angle = np.radians(15.0)
    np.testing.assert_allclose(out, [[np.cos(angle), np.sin(angle)]], atol=1e-6)
    assert out.dtype == np.float32


def test_aqe_two_neighbours() -> None:
    out = average_query_expansion(Q2, G2, k=2)
    np.testing.assert_allclose(out, [unit([1 + S3, 0.5 + 1.0])], atol=1e-6)


def test_aqe_k_zero_and_k_beyond_gallery() -> None:
    np.testing.assert_allclose(average_query_expansion(2 * Q2, G2, k=0), Q2)
    # all three gallery items: (1 + S3 + 0 - 1, 0 + 0.5 + 1 + 0)
    np.testing.assert_allclose(average_query_expansion(Q2, G2, k=10), [unit([S3, 1.5])], atol=1e-6)


def test_alpha_qe_weights_by_similarity_power() -> None:
    out = alpha_query_expansion(Q2, G2, k=2, alpha=3.0)
    w = S3**3  # the 90-degree neighbour has similarity 0, hence weight 0
    np.testing.assert_allclose(out, [unit([1 + w * S3, w * 0.5])], atol=1e-6)
    # negative similarities get weight 0 rather than a negative or NaN weight
    out3 = alpha_query_expansion(Q2, G2, k=3, alpha=0.5)
    np.testing.assert_allclose(out3, [unit([1 + S3**0.5 * S3, S3**0.5 * 0.5])], atol=1e-6)


def test_alpha_zero_equals_aqe_for_positive_neighbours() -> None:
    np.testing.assert_allclose(
        alpha_query_expansion(Q2, G2, k=1, alpha=0.0), average_query_expansion(Q2, G2, k=1)
    )


def test_dba_excludes_self_and_breaks_ties_by_index() -> None:
    e1, e2 = np.eye(3, dtype=np.float32)[:2]
    diag = unit([1.0, 1.0, 0.0])
    g = np.stack([e1, e2, diag]).astype(np.float32)
    out = database_augmentation(g, k=1, alpha=0.0)
    expected = np.stack(
        [
            unit(e1 + diag),  # e1's nearest other vector is the diagonal
            unit(e2 + diag),
            unit(diag + e1),  # the diagonal is equally close to e1 and e2: lower index wins
        ]
    )
    np.testing.assert_allclose(out, expected, atol=1e-6)
    weighted = database_augmentation(g, k=2, alpha=2.0)
    w = 0.5  # (1/sqrt 2)^2 for the diagonal; e1 and e2 are orthogonal (weight 0)
    np.testing.assert_allclose(weighted[0], unit(e1 + w * diag), atol=1e-6)
    np.testing.assert_allclose(weighted[2], unit(diag + w * e1 + w * e2), atol=1e-6)


def test_outputs_are_unit_and_chunking_does_not_matter(monkeypatch) -> None:
    rng = np.random.default_rng(0)
    q = unit(rng.standard_normal((37, 8))).astype(np.float32)
    g = unit(rng.standard_normal((53, 8))).astype(np.float32)
    full = alpha_query_expansion(q, g, k=4, alpha=3.0)
    dba_full = database_augmentation(g, k=3)
    np.testing.assert_allclose(np.linalg.norm(full, axis=1), 1.0, atol=1e-6)
    monkeypatch.setattr(qe_module, "_CHUNK", 5)
    np.testing.assert_allclose(alpha_query_expansion(q, g, k=4, alpha=3.0), full, atol=1e-7)
    np.testing.assert_allclose(database_augmentation(g, k=3), dba_full, atol=1e-7)
    # independent oracle: the loop version of alpha-QE
    sims = q.astype(np.float64) @ g.T
    for i in range(len(q)):
        top = np.argsort(-sims[i], kind="stable")[:4]
        v = q[i] + sum(max(sims[i, j], 0) ** 3 * g[j] for j in top)
        np.testing.assert_allclose(full[i], unit(v), atol=1e-6)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="k must be"):
        average_query_expansion(Q2, G2, k=-1)
    with pytest.raises(ValueError, match="alpha"):
        alpha_query_expansion(Q2, G2, k=1, alpha=-1.0)
    with pytest.raises(ValueError, match="dimension"):
        average_query_expansion(Q2, np.ones((3, 3), dtype=np.float32), k=1)
    with pytest.raises(ValueError, match="2-D"):
        database_augmentation(G2[0], k=1)
