"""Folders of images as embeddings, and rankings of them as names.

What inference, the ablation and the benchmarks share: ``embed_folder`` (with the gallery cache),
``search_readable`` (retrieve over the readable images only, with the optional enhancements) and
``rankings_from_ids`` (rows of gallery positions back to file names).
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from simsearch.data import FlatImageDataset
from simsearch.data.transforms import eval_transform
from simsearch.inference.enhancements import CropEmbeddings, Enhancements, search_enhanced
from simsearch.retrieval.cache import cache_key, load_cached, save_cached
from simsearch.retrieval.embed import embed_dataset
from simsearch.retrieval.pipeline import RetrievalOptions

__all__ = ["EmbeddedFolder", "embed_folder", "rankings_from_ids", "search_readable"]

log = logging.getLogger("simsearch.infer")


class EmbeddedFolder:
    """Names (relative to the folder), embeddings and the readable-image mask of one folder."""

    def __init__(self, folder: Path, names: list[str], emb: np.ndarray, ok: np.ndarray, seconds: float):
        self.folder, self.names, self.emb, self.ok, self.seconds = folder, names, emb, ok, seconds


def embed_folder(model, folder: str | Path, cfg: DictConfig, accelerator=None, tta_flip: bool = False,
                 scales: tuple[float, ...] = (1.0,), cache: tuple[str, str] | None = None,
                 desc: str = "embedding") -> EmbeddedFolder:
    """Embed every image of a flat folder; ``cache`` = (cache_dir, checkpoint sha) reuses results."""
    dc = model.data_config
    size = cfg.data.image_size or dc.input_size
    transform = eval_transform(cfg, dc)
    ds = FlatImageDataset(folder, transform)
    t0 = time.perf_counter()
    key = None
    if cache is not None:
        settings = {"size": size, "tta_flip": tta_flip, "scales": list(scales),
                    "resize_ratio": cfg.data.eval_resize_ratio}
        key = cache_key(cache[1], ds.paths, settings)
        hit = load_cached(cache[0], key, ds.names)
        if hit is not None:
            return EmbeddedFolder(Path(folder), ds.names, hit[0], hit[1], time.perf_counter() - t0)
    emb, ok = embed_dataset(model, ds, accelerator, batch_size=cfg.infer.batch_size,
                            num_workers=cfg.data.num_workers, tta_flip=tta_flip, scales=scales, desc=desc)
    if key is not None and (accelerator is None or accelerator.is_main_process):
        save_cached(cache[0], key, ds.names, emb, ok)
    for name in np.asarray(ds.names)[~ok]:
        log.warning("unreadable image %s in %s: it gets a zero embedding", name, folder)
    return EmbeddedFolder(Path(folder), ds.names, emb, ok, time.perf_counter() - t0)


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
    return search_enhanced(query, gallery, opts, enh, crops, timings)[0]
