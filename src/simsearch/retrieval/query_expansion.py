"""Query expansion and database-side augmentation on L2-normalised embeddings.

- Average query expansion (AQE): Chum, Philbin, Sivic, Isard, Zisserman, "Total Recall:
  Automatic Query Expansion with a Generative Feature Model for Object Retrieval", ICCV 2007.
- alpha-weighted query expansion (alpha-QE): Radenović, Tolias, Chum, "Fine-tuning CNN Image
  Retrieval with No Human Annotation", TPAMI 2018 -- neighbours weighted by sim^alpha.
- Database-side augmentation (DBA): Arandjelović, Zisserman, "Three things everyone should know
  to improve object retrieval", CVPR 2012, with the alpha weights of Radenović et al.

Negative similarities get weight 0 in the alpha variants (sim^alpha is undefined for them
with non-integer alpha). Neighbours come from the gallery's FAISS index when one is passed
(``retrieve()`` passes its own, so a 1M gallery is not scanned exactly: 10k queries x 1M items
would be 4 GB of similarities per 1,024 queries), else from an exact chunked matmul whose ties
are broken by the lower gallery index.
"""

from __future__ import annotations

import numpy as np

from simsearch.retrieval.index import as_float32_matrix, search

__all__ = ["alpha_query_expansion", "average_query_expansion", "database_augmentation"]

_CHUNK = 1024  # query rows per matmul block: memory ~ _CHUNK * Ng floats


def _normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


def _index_neighbours(q: np.ndarray, index, k: int, exclude_self: bool) -> tuple[np.ndarray, np.ndarray]:
    """(sims, ids) of the k best rows from ``index``; with ``exclude_self`` (q is the indexed set)
    k + 1 are searched and row i's own id dropped (else its last hit)."""
    sims, ids = search(index, q, k + int(exclude_self))
    if (ids < 0).any():
        raise ValueError(f"the index returned fewer than {k} neighbours for query expansion; "
                         "use an exact index ('Flat') or larger efSearch/nprobe")
    if not exclude_self:
        return sims, ids
    own = ids == np.arange(len(q))[:, None]
    own[~own.any(axis=1), -1] = True  # self not found (an approximate index): drop the weakest
    first = np.argmax(own, axis=1)
    keep = np.ones_like(own)
    keep[np.arange(len(q)), first] = False
    return sims[keep].reshape(len(q), k), ids[keep].reshape(len(q), k)


def _top_neighbours(
    q: np.ndarray, g: np.ndarray, k: int, exclude_self: bool = False, index=None
) -> tuple[np.ndarray, np.ndarray]:
    """(sims, ids), each (Nq, k), of the k most similar rows of g, best first (from ``index``
    when given: a FAISS index over g)."""
    if index is not None:
        if index.ntotal != len(g):
            raise ValueError(f"the index holds {index.ntotal} vectors but the gallery has {len(g)}")
        return _index_neighbours(q, index, k, exclude_self)
    sims_out = np.empty((len(q), k), dtype=np.float32)
    ids_out = np.empty((len(q), k), dtype=np.int64)
    for s in range(0, len(q), _CHUNK):
        sims = q[s : s + _CHUNK] @ g.T
        if exclude_self:
            rows = np.arange(len(sims))
            sims[rows, rows + s] = -np.inf
        part = np.argpartition(-sims, k - 1, axis=1)[:, :k] if k < g.shape[0] else None
        ids = np.broadcast_to(np.arange(g.shape[0]), sims.shape) if part is None else part
        top = np.take_along_axis(sims, ids, axis=1)
        order = np.lexsort((ids, -top), axis=1)  # by similarity, then by index
        sims_out[s : s + len(sims)] = np.take_along_axis(top, order, axis=1)
        ids_out[s : s + len(sims)] = np.take_along_axis(ids, order, axis=1)
    return sims_out, ids_out


def _check(q: np.ndarray, g: np.ndarray, k: int, q_name: str) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
        raise ValueError(f"k must be an integer >= 0, got {k!r}")
    qa = as_float32_matrix(q, q_name)
    ga = as_float32_matrix(g, "g")
    if qa.shape[1] != ga.shape[1]:
        raise ValueError(f"{q_name} has dimension {qa.shape[1]} but g has {ga.shape[1]}")
    return qa, ga


def _expand(
    q: np.ndarray, g: np.ndarray, k: int, alpha: float | None, exclude_self: bool, index=None
) -> np.ndarray:
    """normalise(q + sum_j w_j g_j) over the top-k neighbours j; w = 1 or max(sim, 0)^alpha."""
    k = min(k, g.shape[0] - int(exclude_self))
    if k <= 0:
        return _normalise(q)
    sims, ids = _top_neighbours(q, g, k, exclude_self, index)
    weights = np.ones_like(sims) if alpha is None else np.maximum(sims, 0.0) ** alpha
    out = q.astype(np.float64).copy()
    for j in range(k):  # k is small: one weighted gather per neighbour rank
        out += weights[:, j : j + 1].astype(np.float64) * g[ids[:, j]]
    return _normalise(out)


def average_query_expansion(q: np.ndarray, g: np.ndarray, k: int, index=None) -> np.ndarray:
    """AQE (Chum et al. 2007): each query becomes the normalised mean of itself and its
    top-k gallery neighbours (from ``index``, a FAISS index over g, when given). Returns float32
    unit vectors (Nq, D)."""
    qa, ga = _check(q, g, k, "q")
    return _expand(qa, ga, k, alpha=None, exclude_self=False, index=index)


def alpha_query_expansion(q: np.ndarray, g: np.ndarray, k: int, alpha: float = 3.0, index=None) -> np.ndarray:
    """alpha-QE (Radenović et al. 2018): the query plus its top-k gallery neighbours (from
    ``index`` when given) weighted by sim^alpha, normalised; alpha=0 gives AQE. Returns float32
    unit vectors (Nq, D)."""
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha!r}")
    qa, ga = _check(q, g, k, "q")
    return _expand(qa, ga, k, alpha=float(alpha), exclude_self=False, index=index)


def database_augmentation(g: np.ndarray, k: int, alpha: float = 3.0, index=None) -> np.ndarray:
    """DBA (Arandjelović & Zisserman 2012): every gallery vector becomes itself plus its k
    nearest other gallery vectors (from ``index`` over g when given) weighted by sim^alpha
    (alpha=0: uniform), normalised."""
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha!r}")
    _, ga = _check(g, g, k, "g")
    return _expand(ga, ga, k, alpha=float(alpha), exclude_self=True, index=index)
