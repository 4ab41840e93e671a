"""``retrieve()``: DBA -> query expansion -> FAISS search -> k-reciprocal re-ranking.

Pure function over embeddings; each stage is switched on by the ``infer`` config section, as in
fast-reid, and each lives in its own module with its paper cited.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import faiss
import numpy as np

from simsearch.config import ConfigError, check_number, section_values
from simsearch.retrieval.index import as_float32_matrix, build_index, search
from simsearch.retrieval.query_expansion import (
    alpha_query_expansion,
    average_query_expansion,
    database_augmentation,
)
from simsearch.retrieval.rerank import NORMS, rerank_with_neighbours, stacked_neighbours

__all__ = ["RetrievalOptions", "drop_self", "retrieve"]

log = logging.getLogger("simsearch.retrieval")


@dataclass(frozen=True)
class RetrievalOptions:
    index: str = "auto"  # as infer.index in configs/default.yaml (tests/test_config.py checks they agree)
    ef_search: int = 128
    nprobe: int = 16
    top_k: int | str = 100
    qe: str = "none"
    qe_k: int = 2
    qe_alpha: float = 3.0
    dba_k: int = 0
    rerank: bool = True
    k1: int = 20
    k2: int = 6
    lambda_value: float = 0.3
    rerank_candidates: int = 100
    rerank_norm: str = "fixed"
    exclude_self: bool = True

    @classmethod
    def from_config(cls, infer_cfg, **changes) -> "RetrievalOptions":
        """Take the matching keys of the config's ``infer`` section, then ``changes``."""
        opts = cls(**section_values(cls, infer_cfg, changes))
        opts.check()
        return opts

    def check(self) -> None:
        """Raise ConfigError naming the ``infer`` key at fault and its value."""
        if self.qe not in ("none", "avg", "alpha"):
            raise ConfigError(f"infer.qe: '{self.qe}' must be none, avg or alpha")
        if not isinstance(self.index, str) or not self.index.strip():
            raise ConfigError(f"infer.index: must be auto or a FAISS factory string, got {self.index!r}")
        check_number("infer.top_k", self.top_k, 0, words=("all",), null_ok=True,
                     why="all or 0 = the whole gallery")
        check_number("infer.ef_search", self.ef_search, 1)
        check_number("infer.nprobe", self.nprobe, 1)
        check_number("infer.qe_k", self.qe_k, 1)
        check_number("infer.qe_alpha", self.qe_alpha, 0)
        check_number("infer.dba_k", self.dba_k, 0, why="0 = off")
        check_number("infer.k1", self.k1, 1)
        check_number("infer.k2", self.k2, 1)
        check_number("infer.lambda_value", self.lambda_value, 0, 1)
        check_number("infer.rerank_candidates", self.rerank_candidates, 1)
        if self.rerank_norm not in NORMS:
            raise ConfigError(f"infer.rerank_norm: '{self.rerank_norm}' must be {' or '.join(NORMS)}")


def retrieve(q: np.ndarray, g: np.ndarray, opts: RetrievalOptions, timings: dict[str, float] | None = None,
             self_ids: np.ndarray | None = None, index: faiss.Index | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
    """Rank the gallery for every query: (ids (Nq, K) best first, scores (Nq, K), higher better).

    K = top_k, or the whole gallery when top_k is 0 or "all". Re-ranking reorders each query's first
    ``rerank_candidates`` (at least K when K is smaller); the rest follow in index order.
    Scores are cosine similarities, or 1 - re-ranked distance for re-ranked positions (the
    positions after them get cosine - 2, so scores always decrease along a row).

    ``self_ids`` (Nq,): the gallery row that is query i itself (-1: none). Each query's own row is
    left out of its ranking: K + 1 are searched and the self-match dropped (see :func:`drop_self`).

    ``index``: the gallery's index, when the caller has built it already (``build_index(g, opts.index,
    ef_search=opts.ef_search, nprobe=opts.nprobe)``); re-ranking adds the queries to it, so it
    must not be searched as a gallery index afterwards. Not allowed with DBA, which changes g.
    """
    if index is not None and opts.dba_k:
        raise ValueError("retrieve(): a prebuilt index cannot be used with infer.dba_k, which changes the gallery")
    if self_ids is None or not (np.asarray(self_ids) >= 0).any():
        return _retrieve(q, g, opts, timings, index=index)
    ng = len(g)
    k = ng if opts.top_k in (0, None, "all") else min(int(opts.top_k), ng)
    ids, scores = _retrieve(q, g, opts, timings, extra=1, index=index)
    ids, scores = drop_self(ids, scores, np.asarray(self_ids), k)
    if k == ng and len(ids) and (ids[:, -1] < 0).all():  # the whole gallery, every query in it: one less
        ids, scores = ids[:, :-1], scores[:, :-1]
    return ids, scores


def drop_self(ids: np.ndarray, scores: np.ndarray, self_ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Remove ``self_ids[i]`` from row i (-1: nothing to remove), keep the order and the first ``k``.

    Search ``k + 1`` first so that no row comes out short; a row that still does (the whole gallery
    was searched) ends in id -1 with score -inf, like FAISS's padding.
    """
    drop = (ids == self_ids[:, None]) & (self_ids[:, None] >= 0)
    order = np.argsort(drop, axis=1, kind="stable")  # kept entries first, in their order
    ids = np.take_along_axis(ids, order, axis=1).copy()
    scores = np.take_along_axis(scores, order, axis=1).astype(np.float32)
    moved = np.take_along_axis(drop, order, axis=1)
    ids[moved], scores[moved] = -1, -np.inf
    if ids.shape[1] < k:
        pad = k - ids.shape[1]
        ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
        scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
    return ids[:, :k], scores[:, :k]


def _retrieve(q: np.ndarray, g: np.ndarray, opts: RetrievalOptions, timings: dict[str, float] | None = None,
              extra: int = 0, index: faiss.Index | None = None) -> tuple[np.ndarray, np.ndarray]:
    """retrieve() without the self-match rule; ``extra`` more items per row than top_k (capped at the gallery).

    One index over the gallery serves every stage: DBA's and QE's neighbours, the search, and
    re-ranking's candidates and neighbour lists (the queries are added to it for those last).
    """
    timings = {} if timings is None else timings
    ng = len(g)
    k = ng if opts.top_k in (0, None, "all") else min(int(opts.top_k) + extra, ng)
    t = time.perf_counter()
    if index is None:
        index = build_index(g, opts.index, ef_search=opts.ef_search, nprobe=opts.nprobe)
    elif index.ntotal != ng:
        raise ValueError(f"retrieve(): the index holds {index.ntotal} vectors but the gallery has {ng}")
    timings["index_build_s"] = time.perf_counter() - t
    t = time.perf_counter()
    if opts.dba_k:
        g = database_augmentation(g, opts.dba_k, opts.qe_alpha, index=index)
        index = build_index(g, opts.index, ef_search=opts.ef_search, nprobe=opts.nprobe)  # over the new vectors
    if opts.qe == "avg":
        q = average_query_expansion(q, g, opts.qe_k, index=index)
    elif opts.qe == "alpha":
        q = alpha_query_expansion(q, g, opts.qe_k, opts.qe_alpha, index=index)
    timings["query_expansion_s"] = time.perf_counter() - t

    t = time.perf_counter()
    c = min(max(opts.rerank_candidates, 1), ng)
    scores, ids = search(index, q, max(k, c) if opts.rerank else k)
    timings["search_s"] = time.perf_counter() - t
    if not opts.rerank:
        return ids, scores

    short = int((ids[:, :c] < 0).any(axis=1).sum())
    if short:  # re-ranking ranks what was found; the rows end in -1 like the search's own
        log.info("the index %s found fewer than infer.rerank_candidates (%d) items for %d queries "
                 "(raise infer.nprobe or infer.ef_search for more)", opts.index, c, short)
    t = time.perf_counter()
    q32, g32 = as_float32_matrix(q, "q"), as_float32_matrix(g, "g")
    neigh, scale = stacked_neighbours(q32, g32, index, max(opts.k1 + 1, opts.k2), opts.rerank_norm)
    del index  # it now holds the queries too; the encoding vectors need the memory
    timings["rerank_neighbours_s"] = time.perf_counter() - t
    rr_ids, rr_dist = rerank_with_neighbours(q32, g32, neigh, scale, ids[:, :c], opts.k1, opts.k2,
                                             opts.lambda_value, timings)
    timings["rerank_s"] = time.perf_counter() - t
    return _splice(rr_ids, 1.0 - rr_dist, ids[:, :k], scores[:, :k], k)


def _splice(rr_ids: np.ndarray, rr_scores: np.ndarray, ids: np.ndarray, scores: np.ndarray,
            k: int) -> tuple[np.ndarray, np.ndarray]:
    """Re-ranked head first, then the index's order for the positions beyond the candidates."""
    nq, c = rr_ids.shape
    if c >= k:
        return rr_ids[:, :k], rr_scores[:, :k].astype(np.float32)
    out_ids = np.full((nq, k), -1, dtype=np.int64)  # a row the index could not fill ends in -1, -inf
    out_scores = np.full((nq, k), -np.inf, dtype=np.float32)
    for i in range(nq):
        head = set(rr_ids[i].tolist())
        tail = [j for j in range(ids.shape[1]) if ids[i, j] not in head][: k - c]
        out_ids[i, :c], out_ids[i, c : c + len(tail)] = rr_ids[i], ids[i, tail]
        out_scores[i, :c] = rr_scores[i]  # 1 - distance, in [0, 1]
        out_scores[i, c : c + len(tail)] = scores[i, tail] - 2.0  # cosine - 2, in [-3, -1]: stays below
    return out_ids, out_scores
