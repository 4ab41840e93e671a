"""``infer.rerank_norm`` reaches the re-ranking through RetrievalOptions and retrieve()."""

from __future__ import annotations

import numpy as np
import pytest

from simsearch.config import ConfigError, load
from simsearch.retrieval.pipeline import RetrievalOptions, retrieve
from simsearch.retrieval.rerank import NORMS, k_reciprocal_rerank
from simsearch.utils.synthetic import clustered_unit_vectors


@pytest.mark.parametrize("norm", NORMS)
def test_retrieve_reranks_with_the_configured_norm(norm: str) -> None:
    q, g = clustered_unit_vectors(30, 90, 16, 8, 0.8, seed=7)
    opts = RetrievalOptions.from_config(load([], [f"infer.rerank_norm={norm}"]).infer, top_k=0,
                                        rerank_candidates=90, exclude_self=False)
    assert opts.rerank_norm == norm
    ids, scores = retrieve(q, g, opts)
    mine, dist = k_reciprocal_rerank(q, g, opts.k1, opts.k2, opts.lambda_value, num_candidates=90, norm=norm)
    other, _ = k_reciprocal_rerank(q, g, opts.k1, opts.k2, opts.lambda_value, num_candidates=90,
                                   norm=next(n for n in NORMS if n != norm))
    assert np.array_equal(ids, mine)
    np.testing.assert_allclose(scores, 1.0 - dist, atol=1e-6)
    assert not np.array_equal(ids, other)  # so the option does change the ranking here


def test_bad_norm_names_the_key() -> None:
    with pytest.raises(ConfigError, match="infer.rerank_norm.*column_max"):
        RetrievalOptions.from_config(load([], ["infer.rerank_norm=row_max"]).infer)
    with pytest.raises(ConfigError, match="infer.rerank_norm"):
        RetrievalOptions(rerank_norm="max").check()
