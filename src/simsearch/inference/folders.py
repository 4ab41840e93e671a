"""Query and gallery sets as embeddings, and rankings of them as names.

What inference, the ablation and the benchmarks share: ``embed_folder`` (a folder or an
:class:`~simsearch.inference.sources.ImageSet` from a manifest, with the gallery cache),
``search_readable`` (retrieve over the readable images only, with the optional enhancements) and
``rankings_from_ids`` (rows of gallery positions back to names).
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from simsearch.data import NamedImageDataset
from simsearch.data.transforms import eval_transform
from simsearch.inference.enhancements import CropEmbeddings, Enhancements, search_enhanced
from simsearch.inference.sources import ImageSet, as_image_set
from simsearch.retrieval.cache import cache_key, load_cached, save_cached
from simsearch.retrieval.device import embedding_device, requested_precision, resolve_precision
from simsearch.retrieval.embed import embed_dataset
from simsearch.retrieval.pipeline import RetrievalOptions

__all__ = ["EmbeddedFolder", "embed_folder", "rankings_from_ids", "scores_from_ids", "search_readable",
           "search_readable_scored"]

log = logging.getLogger("simsearch.infer")


class EmbeddedFolder:
    """Names, image files, embeddings and the readable-image mask of one query or gallery set.

    ``folder`` is where the set came from (a folder or a CSV manifest); ``paths`` default to the
    names below it; ``labels`` are the manifest's, when it has them.
    """

    def __init__(self, folder: Path, names: list[str], emb: np.ndarray, ok: np.ndarray, seconds: float,
                 paths: list[str] | None = None, labels: list[str] | None = None):
        self.folder, self.names, self.emb, self.ok, self.seconds = folder, names, emb, ok, seconds
        self.paths = paths if paths is not None else [str(folder / n) for n in names]
        self.labels = labels


def embed_folder(model, folder: str | Path | ImageSet, cfg: DictConfig, accelerator=None, tta_flip: bool = False,
                 scales: tuple[float, ...] = (1.0,), cache: tuple[str, str] | None = None,
                 desc: str = "embedding") -> EmbeddedFolder:
    """Embed every image of a folder (sub-folders included) or ImageSet in ``infer.precision``, on the
    accelerator's device or the model's; ``cache`` = (cache_dir, checkpoint sha) reuses results."""
    images = as_image_set(folder, "image folder")
    dc = model.data_config
    size = cfg.data.image_size or dc.input_size
    transform = eval_transform(cfg, dc)
    ds = NamedImageDataset(images.names, images.paths, transform, images.source)
    t0 = time.perf_counter()

    def done(emb: np.ndarray, ok: np.ndarray) -> EmbeddedFolder:
        return EmbeddedFolder(images.source, ds.names, emb, ok, time.perf_counter() - t0, ds.paths, images.labels)

    key = None
    precision = requested_precision(cfg)
    if cache is not None:
        settings = {"size": size, "tta_flip": tta_flip, "scales": list(scales),
                    "resize_ratio": cfg.data.eval_resize_ratio,
                    "precision": resolve_precision(precision, embedding_device(model, accelerator))}
        key = cache_key(cache[1], ds.paths, settings)
        hit = load_cached(cache[0], key, ds.names)
        if hit is not None:
            return done(*hit)
    emb, ok = embed_dataset(model, ds, accelerator, batch_size=cfg.infer.batch_size,
                            num_workers=cfg.data.num_workers, tta_flip=tta_flip, scales=scales, desc=desc,
                            precision=precision)
    if key is not None and (accelerator is None or accelerator.is_main_process):
        save_cached(cache[0], key, ds.names, emb, ok)
    for name in np.asarray(ds.names)[~ok]:
        log.warning("unreadable image %s in %s: it gets a zero embedding", name, images.source)
    return done(emb, ok)


def rankings_from_ids(query: EmbeddedFolder, gallery: EmbeddedFolder, ids: np.ndarray) -> dict[str, list[str]]:
    """Map rows for the readable queries back to names; unreadable gallery images never appear.

    An unreadable query has nothing to search with; it still gets a row (the gallery in name
    order, logged at embedding time) so the submission stays complete.
    """
    names = np.asarray(gallery.names)[np.flatnonzero(gallery.ok)]
    rows = iter(ids)
    fallback = [str(n) for n in names[: ids.shape[1]]]
    out = {}
    for q, ok in zip(query.names, query.ok):
        row = next(rows) if ok else None
        out[q] = [str(n) for n in names[row[row >= 0]]] if ok else fallback
    return out


def search_readable(query: EmbeddedFolder, gallery: EmbeddedFolder, opts: RetrievalOptions,
                    timings: dict[str, float] | None = None, enh: Enhancements | None = None,
                    crops: CropEmbeddings | None = None) -> np.ndarray:
    """retrieve() over the readable queries and gallery images only, with the optional stages."""
    return search_readable_scored(query, gallery, opts, timings, enh, crops)[0]


def search_readable_scored(query: EmbeddedFolder, gallery: EmbeddedFolder, opts: RetrievalOptions,
                           timings: dict[str, float] | None = None, enh: Enhancements | None = None,
                           crops: CropEmbeddings | None = None) -> tuple[np.ndarray, np.ndarray]:
    """search_readable's (ids, scores): the same ranking with each item's similarity, which thresholds
    and class-level submissions need."""
    return search_enhanced(query, gallery, opts, enh, crops, timings)


def scores_from_ids(query: EmbeddedFolder, ids: np.ndarray, scores: np.ndarray) -> dict[str, list[float]]:
    """{query name: similarity of each name of its rankings_from_ids row}; an unreadable query's
    fallback row scores -inf (nothing was compared)."""
    rows = iter(zip(ids, scores))
    out = {}
    for q, ok in zip(query.names, query.ok):
        if ok:
            row, row_scores = next(rows)
            out[q] = [float(s) for s in row_scores[row >= 0]]
        else:
            out[q] = [float("-inf")] * ids.shape[1]
    return out
