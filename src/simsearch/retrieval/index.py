"""FAISS inner-product indexes over L2-normalised embeddings (so scores are cosines).

The factory string is FAISS's own (Johnson, Douze, Jégou, "Billion-scale similarity search
with GPUs", IEEE TBD 2019): ``Flat`` is exact, ``HNSW32`` a graph index, ``IVF{n},Flat`` /
``IVF{n},PQ{m}`` inverted files. Search-time knobs (``efSearch``, ``nprobe``) are set here so
callers only pass the values from the ``infer:`` config section. ``auto`` picks by gallery size
(``recommend_index``), a rule measured by ``simsearch bench index``.
"""

from __future__ import annotations

import math

import faiss
import numpy as np

__all__ = ["FLAT_BELOW", "as_float32_matrix", "build_index", "check_factory", "ivf_nlist", "recommend_index",
           "resolve_factory", "search"]

#: Gallery size from which an inverted-file index replaces Flat under ``auto``.
FLAT_BELOW = 50_000


def ivf_nlist(n: int) -> int:
    """Inverted lists for ``n`` vectors: power of two nearest 4 sqrt(n), at most n/39.

    FAISS's k-means warns below 39 training points per centroid, hence the cap.
    """
    nearest = 2 ** round(math.log2(4 * math.sqrt(max(n, 1))))
    cap = 2 ** math.floor(math.log2(max(n / 39, 1)))
    return max(1, min(nearest, cap))


def recommend_index(n: int) -> str:
    """FAISS factory string of the default index for a gallery of ``n`` L2-normalised vectors.

    Rule: an approximate index becomes the default only where one met the goal R@10 >= 0.95 at
    >= 20x Flat's batched QPS, measured on 2 cores, dim 512, clustered data and caltech101
    embeddings (``simsearch bench index``; figures in the README's Benchmarks section):

    - at 10k no index met it and Flat answers a batch of queries in well under a millisecond
      per query, so ``Flat`` below FLAT_BELOW = 50k (between the 10k and 100k measurements);
    - at 100k and above ``IVF{nlist},Flat`` (nlist ~ 4 sqrt(N)) met it, and beat HNSW32 on build
      time, memory and QPS at equal recall; with the config's nprobe (16) its R@10 stayed near 1;
    - IVF-PQ stays an explicit choice for memory: far below 0.95 recall without a re-ranking
      stage, and its codebook training takes minutes on 2 cores.
    """
    if n < FLAT_BELOW:
        return "Flat"
    return f"IVF{ivf_nlist(n)},Flat"


def resolve_factory(factory: str, n: int) -> str:
    """``factory`` itself, or the ``recommend_index`` choice for ``n`` vectors when it is ``auto``."""
    return recommend_index(n) if isinstance(factory, str) and factory.strip().lower() == "auto" else factory


def check_factory(factory: str, dim: int, key: str = "infer.index") -> None:
    """Refuse, before anything is embedded, a factory string FAISS cannot build for ``dim``-wide
    vectors (the gallery-size checks of IVF come later, in :func:`build_index`)."""
    if not isinstance(factory, str) or not factory.strip():
        raise ValueError(f"{key}: must be auto or a FAISS factory string, got {factory!r}")
    try:
        faiss.index_factory(int(dim), resolve_factory(factory, 1), faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        reason = (str(exc).strip().splitlines() or [""])[-1][:200]
        raise ValueError(f"{key}: FAISS cannot build the index factory string {factory!r} for {dim}-dim "
                         f"embeddings ({reason}); try Flat, HNSW32 or IVF{{n}},Flat") from exc


def as_float32_matrix(x: np.ndarray, name: str) -> np.ndarray:
    """Return ``x`` as a C-contiguous float32 2-D array (what FAISS needs), naming ``name`` on error."""
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (n, dim), got shape {arr.shape}")
    if arr.shape[1] == 0:
        raise ValueError(f"{name} has zero columns (shape {arr.shape})")
    if not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def _contains_hnsw(index: faiss.Index) -> bool:
    """Walk wrapper indexes (pre-transforms, refine) looking for an HNSW graph."""
    seen = 0
    current = faiss.downcast_index(index)
    while current is not None and seen < 8:
        if isinstance(current, faiss.IndexHNSW):
            return True
        inner = getattr(current, "index", None) or getattr(current, "base_index", None)
        current = faiss.downcast_index(inner) if inner is not None else None
        seen += 1
    return False


def build_index(
    emb: np.ndarray,
    factory: str = "Flat",
    ef_search: int = 128,
    nprobe: int = 16,
    seed: int = 0,
) -> faiss.Index:
    """Build, train (IVF/PQ) and fill an inner-product index over ``emb`` (``auto``: by its size).

    Raises ValueError naming the factory string when FAISS cannot parse it, or when the
    gallery is too small to train it (k-means needs at least as many points as centroids).
    """
    x = as_float32_matrix(emb, "emb")
    if not isinstance(factory, str) or not factory.strip():
        raise ValueError(f"index factory must be a non-empty string, got {factory!r}")
    factory = resolve_factory(factory, x.shape[0])
    if ef_search < 1 or nprobe < 1:
        raise ValueError(f"ef_search and nprobe must be >= 1, got {ef_search} and {nprobe}")
    try:
        index = faiss.index_factory(x.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise ValueError(f"FAISS cannot build index factory string {factory!r}: {exc}") from exc

    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.cp.seed = seed  # k-means seed, for reproducible coarse quantisers
        inner = faiss.downcast_index(ivf)
        pq = getattr(inner, "pq", None)
        if pq is not None:
            pq.cp.seed = seed
        if hasattr(inner, "do_polysemous_training"):
            # The factory turns polysemous training on for IVF..,PQm; search never uses it and
            # it costs minutes per build on a few cores (simsearch/benchmarks/index.py).
            inner.do_polysemous_training = False
        if x.shape[0] < ivf.nlist:
            raise ValueError(
                f"index {factory!r} needs at least {ivf.nlist} vectors to train its "
                f"{ivf.nlist} inverted lists, but the gallery has {x.shape[0]}; "
                "use fewer lists or 'Flat'"
            )
    if not index.is_trained:
        try:
            index.train(x)
        except RuntimeError as exc:
            raise ValueError(
                f"training index {factory!r} on {x.shape[0]} vectors failed: {exc}"
            ) from exc
    index.add(x)

    params = faiss.ParameterSpace()
    if ivf is not None:
        params.set_index_parameter(index, "nprobe", min(nprobe, ivf.nlist))
    if _contains_hnsw(index):
        params.set_index_parameter(index, "efSearch", ef_search)
    return index


def search(index: faiss.Index, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` inner-product search; ``k`` is clamped to the index size.

    Returns (scores float32 (Nq, k), ids int64 (Nq, k)), best first. Approximate indexes
    may return fewer than ``k`` hits for a query; those slots hold id -1 and score -inf.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if index.ntotal == 0:
        raise ValueError("cannot search an empty index")
    x = as_float32_matrix(q, "q")
    if x.shape[1] != index.d:
        raise ValueError(f"q has dimension {x.shape[1]} but the index has dimension {index.d}")
    k = min(int(k), int(index.ntotal))
    scores, ids = index.search(x, k)
    scores = np.where(ids < 0, -np.inf, scores).astype(np.float32, copy=False)
    return scores, ids.astype(np.int64, copy=False)
