"""Seed 002's optional stages around ``retrieve()``: multi-crop queries, coarse-to-fine, text fusion.

Each is switched on by its ``infer`` sub-section (``multicrop``, ``second_stage``, ``text``) and
prepared once per run (detector, second model, sentence encoder, texts); ``search_enhanced`` then
runs: first stage (one query embedding, or every crop and a rank fusion) -> second-model
re-scoring of the top-N -> text re-scoring of the top-N. Used by inference and the ablation.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from simsearch.data.transforms import eval_transform
from simsearch.inference.sources import self_matches
from simsearch.retrieval.device import inference_device, requested_precision
from simsearch.retrieval.embed import embed_dataset
from simsearch.retrieval.fusion import candidate_cosines, fuse_per_query, rescore_head
from simsearch.retrieval.multicrop import CropDataset, MultiCropOptions, build_detector, crop_items
from simsearch.retrieval.pipeline import RetrievalOptions, retrieve
from simsearch.retrieval.second_stage import SecondStage, SecondStageOptions
from simsearch.retrieval.text_expansion import (
    Captioner,
    TextEncoder,
    TextOptions,
    image_texts,
    load_blip_captioner,
    load_sentence_encoder,
    read_titles,
)

__all__ = ["CropEmbeddings", "Enhancements", "embed_query_crops", "multicrop_options", "prepare_enhancements",
           "search_enhanced", "validate_enhancements"]

log = logging.getLogger("simsearch.infer")


@dataclass
class CropEmbeddings:
    """Embeddings of every crop of every query; ``owner[i]`` = the query (folder order) of crop i."""

    emb: np.ndarray
    ok: np.ndarray
    owner: np.ndarray
    opts: MultiCropOptions
    seconds: float


@dataclass
class Enhancements:
    """What the re-scoring stages need, prepared once; None = that stage is off.
    (Multi-crop changes the query embeddings instead: see CropEmbeddings.)"""

    second: SecondStage | None = None
    text: TextOptions | None = None
    text_q: np.ndarray | None = None  # (all queries, D) text embeddings, folder order
    text_g: np.ndarray | None = None  # (all gallery images, D)
    seconds: dict[str, float] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """For the submission's meta file."""
        return {"second_stage": {**asdict(self.second.opts), "model": self.second.description}
                if self.second else None,
                "text": asdict(self.text) if self.text else None}


def multicrop_options(cfg: DictConfig) -> MultiCropOptions | None:
    """``infer.multicrop`` when it is switched on, else None."""
    opts = MultiCropOptions.from_config(cfg.infer.multicrop)
    return opts if opts.enabled else None


def validate_enhancements(cfg: DictConfig) -> None:
    """Check the three sections before any work (errors name the key at fault), the files the switched-on
    ones will read included: a missing second model or titles file must not show after the gallery is embedded."""
    MultiCropOptions.from_config(cfg.infer.multicrop)
    second = SecondStageOptions.from_config(cfg.infer.second_stage)
    text = TextOptions.from_config(cfg.infer.text)
    if second.enabled:
        if second.checkpoint:
            _must_exist("infer.second_stage.checkpoint", Path(second.checkpoint) / "model.safetensors",
                        "a run's best/ or last/ folder")
        if second.config:
            _must_exist("infer.second_stage.config", Path(second.config), "a model config YAML")
    if text.enabled and text.titles_csv:
        _must_exist("infer.text.titles_csv", Path(text.titles_csv), "a CSV of titles")


def _must_exist(key: str, path: Path, what: str) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"{key}: {path} not found ({key} must name {what})")


def embed_query_crops(model, query, cfg: DictConfig, opts: MultiCropOptions, detector=None, accelerator=None,
                      tta_flip: bool = False, scales: tuple[float, ...] = (1.0,)) -> CropEmbeddings:
    """Propose crops for every query image (``query`` an EmbeddedFolder) and embed them like queries.
    ``detector``: default the one the options name (loaded here)."""
    t = time.perf_counter()
    detector = detector if detector is not None else build_detector(opts)
    items, owner = crop_items(query.paths, opts, detector)
    dc = model.data_config
    transform = eval_transform(cfg, dc)
    emb, ok = embed_dataset(model, CropDataset(items, transform), accelerator, batch_size=cfg.infer.batch_size,
                            num_workers=cfg.data.num_workers, tta_flip=tta_flip, scales=scales,
                            desc="query crops" + ("+TTA" if tta_flip else ""), precision=requested_precision(cfg))
    log.info("multi-crop: %d crops for %d queries (%s)", len(items), len(query.names), opts.detector)
    return CropEmbeddings(emb, ok, owner, opts, time.perf_counter() - t)


def _text_embeddings(opts: TextOptions, query, gallery, captioner: Captioner | None,
                     encoder: TextEncoder | None, device: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Caption (where no title) and encode the texts of queries and gallery, both models on ``device``
    (None: :func:`inference_device`), where the image model runs."""
    where = str(device if device is not None else inference_device())
    titles = read_titles(opts.titles_csv, opts.path_column, opts.title_column) if opts.titles_csv else None
    if captioner is None and opts.captioner:
        captioner = load_blip_captioner(opts.captioner, device=where)
    encoder = encoder or load_sentence_encoder(opts.encoder, device=where)
    q_texts = image_texts(query.paths, titles, captioner, "query")
    g_texts = image_texts(gallery.paths, titles, captioner, "gallery")
    return encoder(q_texts), encoder(g_texts)


def prepare_enhancements(cfg: DictConfig, query, gallery, device: Any = None, second_tta: bool | None = None,
                         captioner: Captioner | None = None, text_encoder: TextEncoder | None = None
                         ) -> Enhancements:
    """Load what the switched-on re-scoring stages need (``captioner``/``text_encoder``: injected
    for tests); nothing when both are off.

    ``second_tta``: flip TTA for the second model (default: ``infer.tta_flip``). ``device``: where the
    second model, the captioner and the text encoder go (None: ``retrieval.device.inference_device``);
    the second model embeds in ``infer.precision``.
    """
    inf = cfg.infer
    enh = Enhancements()
    ss = SecondStageOptions.from_config(inf.second_stage)
    if ss.enabled:
        tta = inf.tta_flip if second_tta is None else second_tta
        enh.second = SecondStage.from_options(ss, tta, tuple(inf.tta_scales) if tta else (1.0,), inf.batch_size,
                                              cfg.data.num_workers, device, precision=requested_precision(cfg))
    tx = TextOptions.from_config(inf.text)
    if tx.enabled:
        t = time.perf_counter()
        enh.text = tx
        enh.text_q, enh.text_g = _text_embeddings(tx, query, gallery, captioner, text_encoder, device)
        enh.seconds["text_s"] = time.perf_counter() - t
    return enh


def _first_stage(query, gallery, opts: RetrievalOptions, crops: CropEmbeddings | None,
                 timings: dict[str, float], self_ids: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    g = gallery.emb[gallery.ok]
    if crops is None:
        return retrieve(query.emb[query.ok], g, opts, timings, self_ids)
    keep = crops.ok & query.ok[crops.owner]
    row_of = np.cumsum(query.ok) - 1  # query index -> row among the readable queries
    crop_self = None if self_ids is None else self_ids[row_of[crops.owner[keep]]]
    ids, scores = retrieve(crops.emb[keep], g, opts, timings, crop_self)
    t = time.perf_counter()
    fused = fuse_per_query(ids, scores, row_of[crops.owner[keep]], int(query.ok.sum()), crops.opts.fusion,
                           ids.shape[1], crops.opts.rrf_k)
    timings["fusion_s"] = time.perf_counter() - t
    return fused


def search_enhanced(query, gallery, opts: RetrievalOptions, enh: Enhancements | None = None,
                    crops: CropEmbeddings | None = None, timings: dict[str, float] | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """retrieve() over the readable images, with the stages of ``enh`` that are on; (ids, scores).

    ``crops`` (from embed_query_crops) replaces the query embeddings when given. With
    ``opts.exclude_self`` a query is never ranked for itself (see ``self_matches``).
    """
    timings = {} if timings is None else timings
    if not gallery.ok.any():
        raise ValueError(f"no readable image in the gallery {gallery.folder}")
    self_ids = self_matches(query, gallery) if opts.exclude_self else None
    ids, scores = _first_stage(query, gallery, opts, crops, timings, self_ids)
    if enh is None:
        return ids, scores
    if enh.second is not None:
        t = time.perf_counter()
        q_paths = [str(p) for p, ok in zip(query.paths, query.ok) if ok]
        g_paths = [str(p) for p, ok in zip(gallery.paths, gallery.ok) if ok]
        second = enh.second.scores(q_paths, g_paths, ids)
        ids, scores = rescore_head(ids, scores, second, enh.second.opts.weight)
        timings["second_stage_s"] = time.perf_counter() - t
    if enh.text is not None:
        t = time.perf_counter()
        n = min(enh.text.candidates, ids.shape[1])
        sims = candidate_cosines(enh.text_q[query.ok], enh.text_g[gallery.ok], ids, n)
        ids, scores = rescore_head(ids, scores, sims, enh.text.weight)
        timings["text_fusion_s"] = time.perf_counter() - t
    return ids, scores
