"""One index serves every stage of retrieve(): QE, search and re-ranking's neighbour lists (issue 14, item 3)."""

from __future__ import annotations

import numpy as np
import pytest

from simsearch.retrieval import pipeline
from simsearch.retrieval.index import build_index
from simsearch.retrieval.pipeline import RetrievalOptions, retrieve
from simsearch.retrieval.query_expansion import alpha_query_expansion, database_augmentation
from simsearch.retrieval.rerank import stacked_neighbours
from simsearch.utils.synthetic import clustered_unit_vectors


def _data(nq: int = 40, ng: int = 800, dim: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    return clustered_unit_vectors(nq, ng, dim, n_clusters=20, noise=0.6, seed=seed)


def test_stacked_neighbours_are_the_exact_lists_with_a_flat_index() -> None:
    q, g = _data(12, 50)
    neigh, scale = stacked_neighbours(q, g, build_index(g, "Flat"), 7)
    x = np.concatenate([q, g])
    sims = x @ x.T
    exact = np.argsort(-sims, axis=1, kind="stable")[:, :7]
    # same sets of similarities per row (ids may swap only between equal scores)
    np.testing.assert_allclose(np.take_along_axis(sims, neigh, 1), np.take_along_axis(sims, exact, 1), atol=1e-6)
    assert (neigh[:, 0] == np.arange(len(x))).all()  # every item is its own nearest, in stacked ids
    assert (scale == 2.0).all()


def test_neighbours_an_approximate_index_misses_stand_for_the_item_itself() -> None:
    q, g = _data(10, 300)
    index = build_index(g, "IVF16,Flat", nprobe=1)  # ~19 items per list: fewer than the 21 asked
    neigh, _ = stacked_neighbours(q, g, index, 21)
    own = np.arange(len(neigh))[:, None]
    assert (neigh >= 0).all() and (neigh == own).sum(axis=1).max() > 1  # some rows padded with the item
    for row, me in zip(neigh, own[:, 0]):
        others = row[row != me]
        assert len(set(others.tolist())) == len(others)  # what the index found: each item once


def test_stacked_neighbours_refuse_an_index_of_another_gallery() -> None:
    q, g = _data(5, 50)
    with pytest.raises(ValueError, match="holds 49 vectors but the gallery has 50"):
        stacked_neighbours(q, g, build_index(g[:49], "Flat"), 5)


@pytest.mark.parametrize("factory", ["Flat", "IVF8,Flat"])
def test_query_expansion_and_dba_from_an_index_equal_the_exact_ones(factory: str) -> None:
    q, g = _data()
    index = build_index(g, factory, nprobe=8)  # nprobe = nlist: the IVF scans every list, exactly
    np.testing.assert_allclose(alpha_query_expansion(q, g, 3, 3.0, index=index),
                               alpha_query_expansion(q, g, 3, 3.0), atol=1e-5)
    np.testing.assert_allclose(database_augmentation(g, 2, 3.0, index=index), database_augmentation(g, 2, 3.0),
                               atol=1e-5)


def test_query_expansion_refuses_an_index_of_another_gallery() -> None:
    q, g = _data()
    with pytest.raises(ValueError, match="holds 799 vectors but the gallery has 800"):
        alpha_query_expansion(q, g, 2, index=build_index(g[:-1], "Flat"))


def test_rerank_uses_the_retrieval_index_and_builds_no_other(monkeypatch) -> None:
    q, g = _data()
    built: list[str] = []
    real = pipeline.build_index

    def spy(emb, factory="Flat", **kwargs):
        built.append(factory)
        return real(emb, factory, **kwargs)

    monkeypatch.setattr(pipeline, "build_index", spy)
    opts = RetrievalOptions(index="IVF8,Flat", nprobe=8, qe="alpha", top_k=30, rerank=True, k1=10, k2=4)
    ivf_ids, _ = retrieve(q, g, opts)
    assert built == ["IVF8,Flat"]  # one index: QE, search, candidates and neighbour lists
    # the re-ranking module itself builds nothing: its neighbour lists came through that index
    flat_ids, _ = retrieve(q, g, RetrievalOptions(index="Flat", qe="alpha", top_k=30, rerank=True, k1=10, k2=4))
    assert (ivf_ids[:, :10] == flat_ids[:, :10]).all(axis=1).mean() == 1.0  # an exhaustive IVF is exact


def test_approximate_neighbour_lists_change_the_reranking() -> None:
    # one list probed of 32: the neighbour lists miss items, and the re-ranked order follows them
    q, g = clustered_unit_vectors(60, 3000, 16, n_clusters=30, noise=1.0, seed=3)
    exact, _ = retrieve(q, g, RetrievalOptions(index="Flat", top_k=20, rerank_candidates=20))
    approx, _ = retrieve(q, g, RetrievalOptions(index="IVF32,Flat", nprobe=1, top_k=20, rerank_candidates=20))
    assert not np.array_equal(exact, approx)


@pytest.mark.parametrize("top_k", [20, 150])
def test_an_index_that_finds_fewer_candidates_still_reranks(top_k: int) -> None:
    # ~94 items per list, one list probed: most queries get fewer than the 100 candidates (and a list of
    # fewer than 21 items gives short neighbour lists): what was found is re-ranked, rows end in -1
    q, g = clustered_unit_vectors(30, 3000, 16, n_clusters=30, noise=1.0, seed=3)
    opts = RetrievalOptions(index="IVF32,Flat", nprobe=1, top_k=top_k)
    ids, scores = retrieve(q, g, opts)
    plain, _ = retrieve(q, g, RetrievalOptions(index="IVF32,Flat", nprobe=1, top_k=max(top_k, 100), rerank=False))
    assert ids.shape == (30, top_k) and (plain[:, :100] < 0).any()  # short candidate lists
    for row, srow, found in zip(ids, scores, plain):
        valid = row[row >= 0]
        assert len(set(valid.tolist())) == len(valid) and valid.max() < len(g)
        assert len(valid) >= min(top_k, (found >= 0).sum())  # what the search found, at least (overlaps may add)
        assert (row[len(valid):] == -1).all() and np.isneginf(srow[len(valid):]).all()
        assert np.all(np.diff(srow[: len(valid)]) <= 1e-6)


def test_retrieve_with_a_prebuilt_index_equals_retrieve_without() -> None:
    q, g = _data()
    opts = RetrievalOptions(index="Flat", qe="alpha", top_k=25, k1=8, k2=3)
    ids, scores = retrieve(q, g, opts)
    index = build_index(g, "Flat")
    ids2, scores2 = retrieve(q, g, opts, index=index)
    assert np.array_equal(ids, ids2) and np.allclose(scores, scores2)
    assert index.ntotal == len(g) + len(q)  # re-ranking added the queries, as documented
    with pytest.raises(ValueError, match="holds 840 vectors but the gallery has 800"):
        retrieve(q, g, opts, index=index)
    with pytest.raises(ValueError, match="dba_k"):
        retrieve(q, g, RetrievalOptions(index="Flat", dba_k=2), index=build_index(g, "Flat"))
