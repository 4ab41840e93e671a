"""k-reciprocal re-ranking with sparse neighbour lists (memory ~ N * k, not N^2).

Zhong, Zheng, Cao, Li, "Re-ranking Person Re-identification with k-reciprocal Encoding",
CVPR 2017. Steps, for the union of queries and gallery (N items):

1. top-(k1+1) neighbours of every item (itself included) from the gallery's FAISS inner-product
   index with the queries added (:func:`stacked_neighbours`; ``retrieve()`` passes its own index,
   so an IVF gallery gets IVF neighbour lists, see ``simsearch bench million``);
2. k-reciprocal sets R(p, k1) = {c in N(p, k1) : p in N(c, k1)}, expanded by R(c, k1/2) of each
   member c with |R(c, k1/2) ∩ R(p, k1)| > 2/3 |R(c, k1/2)|;
3. sparse vectors V_p with Gaussian-kernel weights exp(-d(p, c)) on the expanded set,
   normalised to sum 1;
4. local query expansion: V_p <- mean of V over p's k2 nearest items;
5. Jaccard distance 1 - sum(min(V_p, V_g)) / sum(max(V_p, V_g)); final = (1 - lambda) Jaccard
   + lambda d. It is computed for the gallery items whose V shares support with the query's (all
   others have Jaccard 1) plus the ``num_candidates`` cosine-nearest, which makes the returned
   top ``num_candidates`` the same as a dense computation over the whole gallery.

Original distance, ``norm``: the squared L2 distance of unit vectors, ``2 - 2 cos``, divided by
- ``column_max``: each item's largest squared distance to any item of the set, as the authors'
  re_ranking.py (and fast-reid, which copies it) does: ``original_dist / np.max(original_dist,
  axis=0)``, then transposed, so that d(p, c) = ||p - c||^2 / max_j ||p - j||^2 in both the
  Gaussian weights of p's vector and (for a query p) the final mix. The maximum of item p is
  2 - 2 min_j cos(p, j): one more search of the index, with -p as the query, and N floats kept;
- ``fixed``: 4, the largest squared distance of unit vectors, so d = (1 - cos) / 2 for all items.
Both are in [0, 1]; they rank each query's original distances alike, but weigh them against the
Jaccard distance differently. The tests compare both with the dense references of
simsearch/benchmarks/dense_reference.py.
"""

from __future__ import annotations

import time

import numpy as np
import scipy.sparse as sp

from simsearch.retrieval.index import as_float32_matrix, build_index, search

__all__ = ["NORMS", "k_reciprocal_rerank", "rerank_with_neighbours", "stacked_neighbours"]

#: Values of ``norm`` (config key ``infer.rerank_norm``), see the module docstring.
NORMS = ("column_max", "fixed")

_ROW_CHUNK = 2048  # items per chunk in the neighbour-set steps
_QUERY_CHUNK = 256  # queries per chunk of the exact candidate step
_GATHER_CHUNK = 1 << 13  # pairs per chunk of embedding gathers (2 x 8192 x D floats)
_SEARCH_CHUNK = 1 << 16  # items per neighbour search call: FAISS's result buffers stay small


def _check_args(
    q_emb: np.ndarray,
    g_emb: np.ndarray,
    k1: int,
    k2: int,
    lambda_value: float,
    num_candidates: int,
    norm: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Validate the arguments, naming the one at fault; return float32 copies of q and g."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
    for name, value in (("k1", k1), ("k2", k2), ("num_candidates", num_candidates)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if not 0.0 <= float(lambda_value) <= 1.0:
        raise ValueError(f"lambda_value must lie in [0, 1], got {lambda_value!r}")
    q = as_float32_matrix(q_emb, "q_emb")
    g = as_float32_matrix(g_emb, "g_emb")
    if q.shape[1] != g.shape[1]:
        raise ValueError(
            f"q_emb and g_emb dimensions differ: q_emb {q.shape}, g_emb {g.shape}"
        )
    for name, arr in (("q_emb", q), ("g_emb", g)):
        if len(arr) == 0:
            raise ValueError(f"{name} is empty")
        norms = np.linalg.norm(arr, axis=1)
        if np.abs(norms - 1.0).max() > 1e-3:
            raise ValueError(f"{name} rows must be L2-normalised (norms range "
                             f"{norms.min():.4g}..{norms.max():.4g})")
    return q, g


class _Stack:
    """Rows of the union [q; g] (queries first) without a concatenated copy: at a 1M gallery the
    copy alone would be another 2 GB."""

    def __init__(self, q: np.ndarray, g: np.ndarray) -> None:
        self.q, self.g, self.nq = q, g, len(q)

    def __len__(self) -> int:
        return self.nq + len(self.g)

    def chunks(self, size: int = _SEARCH_CHUNK):
        """Consecutive blocks of rows, queries first: (first stacked id, rows)."""
        for part, offset in ((self.q, 0), (self.g, self.nq)):
            for s in range(0, len(part), size):
                yield offset + s, part[s : s + size]

    def take(self, ids: np.ndarray) -> np.ndarray:
        out = np.empty((len(ids), self.q.shape[1]), dtype=np.float32)
        is_q = ids < self.nq
        out[is_q] = self.q[ids[is_q]]
        out[~is_q] = self.g[ids[~is_q] - self.nq]
        return out


def stacked_neighbours(q: np.ndarray, g: np.ndarray, index, k: int, norm: str = "fixed"
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Each item's ``k`` nearest items of [q; g] (itself included) and the half-scales of ``norm``.

    ``index`` is the gallery's own index (``build_index(g, ...)``, ids 0..Ng-1), so the neighbour
    search follows the same rule as retrieval (IVF above ``FLAT_BELOW``) instead of an exact scan
    of N x N pairs (hours at a 1M gallery on 2 cores). The queries are added to it: it comes back
    holding [g; q], and the caller must not search it as a gallery index afterwards. Returns
    (ids (Nq + Ng, k) in stacked order, queries first, best first; scale (Nq + Ng,)); see
    :func:`_half_scales`.
    """
    ng = int(index.ntotal)
    if ng != len(g):
        raise ValueError(f"the index holds {ng} vectors but the gallery has {len(g)}")
    index.add(q)
    x = _Stack(q, g)
    k = min(k, len(x))
    neigh = np.empty((len(x), k), dtype=np.int64)
    for s, rows in x.chunks():
        _, ids = search(index, rows, k)
        stacked = np.where(ids >= ng, ids - ng, ids + len(q))  # [g; q] ids -> [q; g]
        # an approximate index (IVF with a small nprobe) can find fewer than k: the missing
        # neighbours stand for the item itself, which adds nothing to its reciprocal sets
        own = np.arange(s, s + len(rows))[:, None]
        neigh[s : s + len(rows)] = np.where(ids < 0, own, stacked)
    return neigh, _half_scales(x, index, norm)


def _half_scales(x: _Stack, index, norm: str) -> np.ndarray:
    """Per item p, half the divisor of its squared distances: d(p, c) = (1 - cos(p, c)) / scale[p].

    ``fixed``: 2 (squared distance / 4). ``column_max``: 1 - min_j cos(p, j), half of p's largest
    squared distance, found by searching ``index`` (over all items) for the item nearest to -p;
    exact for a Flat index. Items whose set holds only copies of them get 1, to keep every d finite.
    """
    if norm == "fixed":
        return np.full(len(x), 2.0)
    half = np.empty(len(x), dtype=np.float64)
    for s, rows in x.chunks():
        neg_cos, _ = search(index, -rows, 1)  # max_j <-p, x_j> = -min_j cos(p, j)
        half[s : s + len(rows)] = 1.0 + neg_cos[:, 0].astype(np.float64)
    return np.where(half > 1e-6, half, 1.0)


def _distance(x: _Stack, a: np.ndarray, b: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """(1 - cos) / scale[a] between rows x[a] and x[b], pairwise, in chunks of pairs."""
    out = np.empty(len(a), dtype=np.float64)
    for s in range(0, len(a), _GATHER_CHUNK):
        e = s + _GATHER_CHUNK
        dots = np.einsum("ij,ij->i", x.take(a[s:e]), x.take(b[s:e]), dtype=np.float64)
        out[s:e] = dots
    return np.clip((1.0 - out) / scale[a], 0.0, 1.0)


def _reciprocal_sets(neigh: np.ndarray, k: int) -> np.ndarray:
    """R(p, k) for all p as an (N, k+1) array of item ids, -1 where not reciprocal.

    ``neigh`` holds each item's nearest items, best first, itself included.
    """
    forward = neigh[:, : k + 1]
    out = np.full_like(forward, -1)
    for s in range(0, len(forward), _ROW_CHUNK):
        rows = np.arange(s, min(s + _ROW_CHUNK, len(forward)))
        backward = forward[forward[rows]]  # (B, k+1, k+1)
        mutual = (backward == rows[:, None, None]).any(axis=2)
        out[rows] = np.where(mutual, forward[rows], -1)
    return out


def _expanded_sets(r_full: np.ndarray, r_half: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """R*(p, k1) for all p as COO (rows, cols): R(p, k1) plus accepted R(c, k1/2)."""
    half_size = (r_half >= 0).sum(axis=1)
    all_rows, all_cols = [], []
    for s in range(0, len(r_full), _ROW_CHUNK):
        rp = r_full[s : s + _ROW_CHUNK]  # (B, K)
        cand_half = np.where(rp[:, :, None] >= 0, r_half[np.maximum(rp, 0)], -1)  # (B, K, H)
        shared = (cand_half[..., None] == rp[:, None, None, :]) & (cand_half[..., None] >= 0)
        overlap = shared.any(axis=3).sum(axis=2)  # |R(c, k1/2) ∩ R(p, k1)|, (B, K)
        accept = (rp >= 0) & (3 * overlap > 2 * half_size[np.maximum(rp, 0)])
        added = np.where(accept[:, :, None], cand_half, -1).reshape(len(rp), -1)
        members = np.sort(np.concatenate([rp, added], axis=1), axis=1)
        keep = members >= 0
        keep[:, 1:] &= members[:, 1:] != members[:, :-1]  # unique per row
        rows, cols = np.nonzero(keep)
        all_rows.append(rows + s)
        all_cols.append(members[rows, cols])
    return np.concatenate(all_rows), np.concatenate(all_cols)


def _encoding_vectors(x: _Stack, neigh: np.ndarray, k1: int, k2: int, scale: np.ndarray) -> sp.csr_matrix:
    """Sparse V (N, N): Gaussian-kernel weights on R*(p, k1), then local QE over k2 items."""
    n = len(x)
    r_full = _reciprocal_sets(neigh, k1)
    r_half = _reciprocal_sets(neigh, int(round(k1 / 2)))
    rows, cols = _expanded_sets(r_full, r_half)
    weights = np.exp(-_distance(x, rows, cols, scale))
    weights /= np.bincount(rows, weights=weights, minlength=n)[rows]
    v = sp.csr_matrix((weights, (rows, cols)), shape=(n, n))
    if k2 > 1:
        kq = min(k2, neigh.shape[1])
        qe = sp.csr_matrix(
            (np.full(n * kq, 1.0 / kq), neigh[:, :kq].ravel(), np.arange(0, n * kq + 1, kq)),
            shape=(n, n),
        )
        v = (qe @ v).tocsr()
    v.sort_indices()
    return v


def _intersections(v: sp.csr_matrix, g_cols: sp.csc_matrix, rows: np.ndarray, cand: np.ndarray) -> sp.csr_matrix:
    """sum_j min(V_q[j], V_g[j]) for queries ``rows`` against their candidates ``cand`` and every
    gallery item whose V shares support with theirs; other pairs are absent (intersection 0).

    A sparse "min-plus" product through the inverted index of the gallery rows (scipy has the
    minimum of two matrices but no min-product): each nonzero V_q[j] meets the gallery items with
    a nonzero in column j (``g_cols``: the gallery rows of V in CSC form). The candidates enter as
    explicit zeros, so the result's pattern is the union and duplicates sum to the right value.
    """
    vq = v[rows].tocoo()
    starts = g_cols.indptr[vq.col]
    counts = g_cols.indptr[vq.col + 1] - starts
    entry = np.repeat(np.arange(len(counts)), counts)
    pos = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts - starts, counts)
    b, c = cand.shape
    found = cand.ravel() >= 0  # -1: the index found fewer candidates
    data = np.concatenate([np.minimum(vq.data[entry], g_cols.data[pos]), np.zeros(int(found.sum()))])
    q_local = np.concatenate([vq.row[entry], np.repeat(np.arange(b), c)[found]])
    g_ids = np.concatenate([g_cols.indices[pos], cand.ravel()[found]])
    out = sp.csr_matrix((data, (q_local, g_ids)), shape=(b, g_cols.shape[0]))
    out.sum_duplicates()
    return out


def _rerank_chunk(
    v: sp.csr_matrix, g_cols: sp.csc_matrix, x: _Stack, rows: np.ndarray, cand: np.ndarray,
    lambda_value: float, scale: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-C of one chunk of queries over the candidates and all overlapping items.

    A gallery item outside a query's encoding-vector support overlap has Jaccard distance 1, so
    among those the final distance follows the original one (one divisor per query, so in cosine
    order whatever ``scale`` is): the cosine top-C covers them. The
    union of the top-C and the overlapping items therefore holds the dense top-C.
    """
    b, c = cand.shape
    inter = _intersections(v, g_cols, rows, cand)
    lengths = np.diff(inter.indptr)
    q_local = np.repeat(np.arange(b), lengths)
    g_ids = inter.indices
    jaccard = 1.0 - inter.data / (2.0 - inter.data)  # every row of v sums to 1
    # original distances by one BLAS product against the gallery items this chunk needs: far
    # cheaper than gathering a pair of rows for each of the (often hundreds per query) pairs
    cols, col_of = np.unique(g_ids, return_inverse=True)
    block = x.q[rows] @ x.g[cols].T
    original = np.clip((1.0 - block[q_local, col_of].astype(np.float64)) / scale[rows][q_local], 0.0, 1.0)
    final = (1.0 - lambda_value) * jaccard + lambda_value * original
    # rows padded to a (b, L) matrix; rank by final distance, ties by original distance, then id
    within = np.arange(len(g_ids)) - np.repeat(inter.indptr[:-1], lengths)
    pad = np.full((3, b, max(int(lengths.max(initial=0)), c)), np.inf)  # at least c wide: rows may be short
    pad[0][q_local, within], pad[1][q_local, within], pad[2][q_local, within] = final, original, g_ids
    order = np.lexsort((pad[2], pad[1], pad[0]), axis=-1)[:, :c]
    ids = np.take_along_axis(pad[2], order, 1)
    return (np.where(np.isinf(ids), -1, ids).astype(np.int64),
            np.take_along_axis(pad[0], order, 1).astype(np.float32))


def k_reciprocal_rerank(
    q_emb: np.ndarray,
    g_emb: np.ndarray,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    num_candidates: int = 100,
    index_factory: str = "Flat",
    norm: str = "fixed",
) -> tuple[np.ndarray, np.ndarray]:
    """The ``num_candidates`` best gallery items per query after re-ranking (Zhong et al. 2017).

    Exact with a Flat index: equal to the top of a dense re-ranking over the whole gallery, at
    sparse cost.

    ``q_emb`` (Nq, D) and ``g_emb`` (Ng, D) must be L2-normalised. ``index_factory`` is the
    FAISS index built over the gallery for the candidate and neighbour searches ("Flat" = exact,
    "auto" = the retrieval rule; with an approximate one the neighbour lists and the ``column_max``
    maxima are approximate too). ``norm`` divides the squared distances by each item's maximum
    (``column_max``, the authors' code) or by 4 (``fixed``). Returns (indices int64 (Nq, C),
    distances float32 (Nq, C)) with C = min(num_candidates, Ng): gallery rows best first and
    their re-ranked distances (ties keep the original order).
    """
    q, g = _check_args(q_emb, g_emb, k1, k2, lambda_value, num_candidates, norm)
    index = build_index(g, index_factory)
    _, cand = search(index, q, num_candidates)
    neigh, scale = stacked_neighbours(q, g, index, max(k1 + 1, k2), norm)
    del index
    return rerank_with_neighbours(q, g, neigh, scale, cand, k1, k2, lambda_value)


def rerank_with_neighbours(
    q: np.ndarray,
    g: np.ndarray,
    neigh: np.ndarray,
    scale: np.ndarray,
    candidates: np.ndarray,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    timings: dict[str, float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Steps 2-5 of the module docstring on neighbour lists found already.

    ``q``, ``g``: L2-normalised float32; ``neigh``, ``scale``: from :func:`stacked_neighbours` with at
    least max(k1 + 1, k2) neighbours (fewer only when the union is smaller); ``candidates`` (Nq, C):
    each query's cosine top-C gallery rows (the retrieval search; -1 where an approximate index found
    fewer). Returns as :func:`k_reciprocal_rerank`; a row that has fewer than C items to rank ends
    in id -1 with distance inf, like FAISS's padding. ``timings`` receives the seconds of the two steps.
    """
    timings = {} if timings is None else timings
    x = _Stack(q, g)
    t = time.perf_counter()
    v = _encoding_vectors(x, neigh, k1, k2, scale)
    g_cols = v[x.nq :].tocsc()  # column j -> gallery items with V_g[j] > 0
    v = v[: x.nq]  # only the queries' rows are read from here on
    timings["rerank_vectors_s"] = time.perf_counter() - t
    t = time.perf_counter()
    out_idx = np.empty(candidates.shape, dtype=np.int64)
    out_dist = np.empty(candidates.shape, dtype=np.float32)
    for s in range(0, x.nq, _QUERY_CHUNK):
        rows = np.arange(s, min(s + _QUERY_CHUNK, x.nq))
        out_idx[rows], out_dist[rows] = _rerank_chunk(v, g_cols, x, rows, candidates[rows], lambda_value, scale)
    timings["rerank_jaccard_s"] = time.perf_counter() - t
    return out_idx, out_dist
