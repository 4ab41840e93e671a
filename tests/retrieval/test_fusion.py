"""Rank and score fusion against hand-computed cases."""
import numpy as np
import pytest

from simsearch.retrieval.fusion import (
    candidate_cosines,
    fuse_per_query,
    max_fusion,
    reciprocal_rank_fusion,
    rescore_head,
)


def test_rrf_hand_case():
    # item 1: ranks 1 and 2; item 3: ranks 3 and 1; item 2: rank 2; item 4: rank 3
    ids, scores = reciprocal_rank_fusion([[1, 2, 3], [3, 1, 4]], k=60)
    expected = {1: 1 / 61 + 1 / 62, 3: 1 / 63 + 1 / 61, 2: 1 / 62, 4: 1 / 63}
    assert ids.tolist() == [1, 3, 2, 4]
    assert np.allclose(scores, [expected[i] for i in [1, 3, 2, 4]])


def test_rrf_k_changes_the_winner_and_padding_is_skipped():
    # k=0: 7 and 9 (1/1, tie broken by id) beat 8 (1/3 + 1/3) beats 5, 6 (1/2);
    # k=60: 8 (2/63) beats 7, 9 (1/61) beats 5, 6 (1/62)
    rankings = [[7, 5, 8, -1], [9, 6, 8, -1]]
    assert reciprocal_rank_fusion(rankings, k=0)[0].tolist() == [7, 9, 8, 5, 6]
    assert reciprocal_rank_fusion(rankings, k=60)[0].tolist() == [8, 7, 9, 5, 6]
    with pytest.raises(ValueError, match="rrf_k"):
        reciprocal_rank_fusion(rankings, k=-1)


def test_max_fusion_hand_case():
    ids, scores = max_fusion([[1, 2], [2, 3]], [[0.9, 0.5], [0.8, 0.7]])
    assert ids.tolist() == [1, 2, 3]
    assert np.allclose(scores, [0.9, 0.8, 0.7])


def test_fuse_per_query_groups_rows_by_owner_and_pads():
    ids = np.array([[0, 1], [5, 6], [1, 2]])
    scores = np.array([[0.9, 0.1], [0.5, 0.4], [0.95, 0.2]], dtype=np.float32)
    out_ids, out_scores = fuse_per_query(ids, scores, np.array([0, 1, 0]), 2, "max", top_k=4)
    assert out_ids.tolist() == [[1, 0, 2, -1], [5, 6, -1, -1]]
    assert np.allclose(out_scores[0, :3], [0.95, 0.9, 0.2]) and np.isneginf(out_scores[0, 3])
    with pytest.raises(ValueError, match="infer.multicrop.fusion"):
        fuse_per_query(ids, scores, np.array([0, 1, 0]), 2, "mean", top_k=2)
    with pytest.raises(ValueError, match="no crop"):
        fuse_per_query(ids, scores, np.array([0, 0, 0]), 2, "rrf", top_k=2)


def test_rescore_head_reorders_hand_case():
    ids = np.array([[5, 6, 7]])
    scores = np.array([[0.9, 0.8, 0.1]], dtype=np.float32)
    second = np.array([[0.1, 0.9]])  # the second model prefers 6
    out_ids, out_scores = rescore_head(ids, scores, second, weight=0.6)
    # min-max over the head: first [1, 0], second [0, 1]; fused 0.4 * first + 0.6 * second
    assert out_ids.tolist() == [[6, 5, 7]]
    assert np.allclose(out_scores[0, :2], [0.6, 0.4])
    assert out_scores[0, 2] < out_scores[0, 1]  # the tail stays below the head
    # w = 0.4: the first stage still wins
    assert rescore_head(ids, scores, second, weight=0.4)[0].tolist() == [[5, 6, 7]]


def test_rescore_head_with_an_increasing_map_of_the_first_score_keeps_the_order():
    rng = np.random.default_rng(0)
    scores = -np.sort(-rng.random((4, 10)), axis=1).astype(np.float32)
    ids = np.argsort(rng.random((4, 10)), axis=1)
    for w in (0.0, 0.5, 1.0):
        out_ids, out_scores = rescore_head(ids, scores, 3 * scores[:, :6] + 1, w)
        assert (out_ids == ids).all()
        assert (np.diff(out_scores, axis=1) <= 0).all()


def test_rescore_head_keeps_padding_and_checks_weight():
    ids = np.array([[3, -1, -1]])
    scores = np.array([[0.5, -np.inf, -np.inf]], dtype=np.float32)
    out_ids, _ = rescore_head(ids, scores, np.array([[0.2, np.nan]]), 0.5)
    assert out_ids.tolist() == [[3, -1, -1]]
    with pytest.raises(ValueError, match="weight"):
        rescore_head(ids, scores, np.array([[0.2]]), 1.5)


def test_candidate_cosines_picks_each_querys_candidates():
    q = np.array([[1.0, 0.0], [0.0, 1.0]])
    g = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    sims = candidate_cosines(q, g, np.array([[1, 0, 2], [2, -1, -1]]), 2)
    assert np.allclose(sims[0], [0.6, 1.0]) and sims[1, 0] == pytest.approx(1.0) and np.isnan(sims[1, 1])
