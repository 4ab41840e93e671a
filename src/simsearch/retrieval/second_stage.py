"""Coarse-to-fine: re-score each query's FAISS top-N with a second, heavier model.

Seed 002's enhancement. The first stage (the checkpoint's own embeddings, FAISS, optional QE and
re-ranking) shortlists ``infer.second_stage.candidates`` gallery items per query; a second model
(another run's checkpoint, or any backbone config such as ``configs/mobilevit_xxs.yaml``) embeds
the queries and only the shortlisted gallery images, and the candidates are re-ordered by
(1 - w) * first-stage score + w * second-stage cosine. The heavy model never sees the rest of
the gallery, which is the point on a large catalogue.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from simsearch.config import section_values
from simsearch.data import ImageDataset
from simsearch.data.transforms import eval_transform
from simsearch.retrieval.device import place_model
from simsearch.retrieval.embed import embed_dataset
from simsearch.retrieval.fusion import check_rescoring

__all__ = ["SecondStage", "SecondStageOptions", "resolve_config_path"]

log = logging.getLogger("simsearch.second_stage")


@dataclass(frozen=True)
class SecondStageOptions:
    """The ``infer.second_stage`` config section."""

    enabled: bool = False
    checkpoint: str | None = None
    config: str | None = None
    weight: float = 0.5
    candidates: int = 100

    @classmethod
    def from_config(cls, section: Any, **changes: Any) -> "SecondStageOptions":
        values = section_values(cls, section, changes)
        opts = cls(**values)
        if opts.enabled and bool(opts.checkpoint) == bool(opts.config):
            raise ValueError("infer.second_stage.enabled needs exactly one of infer.second_stage.checkpoint "
                             "(a run's best/ folder) and infer.second_stage.config (a model config YAML)")
        check_rescoring("infer.second_stage", opts.weight, opts.candidates)
        return opts


def resolve_config_path(path: str | Path) -> Path:
    """A config path as given, else a shipped config of that name (``config.resolve_config``)."""
    from simsearch.config import ConfigError, resolve_config

    p = resolve_config(path, key="infer.second_stage.config")
    if not p.is_file():
        raise ConfigError(f"infer.second_stage.config: {p} is not a file")
    return p


def _load_second_model(opts: SecondStageOptions) -> tuple[torch.nn.Module, Any, str]:
    """(model in eval mode, its config, a description for logs and meta)."""
    from simsearch.models.checkpoint import load_model

    if opts.checkpoint:
        model, cfg = load_model(opts.checkpoint)
        return model, cfg, f"checkpoint {opts.checkpoint}"
    from simsearch.config import load
    from simsearch.models import build_model

    path = resolve_config_path(opts.config)
    cfg = load([path])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)  # a random-init head (or model) is the same on every run
        model = build_model(cfg)
    return model.eval(), cfg, f"config {path} ({cfg.model.backbone}, weights: {cfg.model.pretrained})"


class SecondStage:
    """The second model, with a per-path embedding cache so each image is embedded once per run."""

    def __init__(self, model: torch.nn.Module, cfg: Any, opts: SecondStageOptions, tta_flip: bool = False,
                 scales: Sequence[float] = (1.0,), batch_size: int = 64, num_workers: int = 0,
                 description: str = "", precision: str = "auto") -> None:
        self.model, self.opts, self.precision = model, opts, precision
        dc = model.data_config
        self.transform = eval_transform(cfg, dc)
        self.tta_flip, self.scales = tta_flip, tuple(scales)
        self.batch_size, self.num_workers = batch_size, num_workers
        self.description = description
        self.seconds = 0.0
        self._cache: dict[str, np.ndarray] = {}

    @classmethod
    def from_options(cls, opts: SecondStageOptions, tta_flip: bool, scales: Sequence[float], batch_size: int,
                     num_workers: int, device: Any = None, precision: str = "auto") -> "SecondStage":
        """Load the second model and put it on ``device`` (an Accelerator, a device, or None:
        ``retrieval.device.inference_device``); it embeds in ``precision`` (``infer.precision``)."""
        t = time.perf_counter()
        model, cfg, desc = _load_second_model(opts)
        place_model(model, device)
        log.info("second stage: %s", desc)
        stage = cls(model, cfg, opts, tta_flip, scales, batch_size, num_workers, desc, precision)
        stage.seconds += time.perf_counter() - t
        return stage

    def embed(self, paths: Sequence[str]) -> np.ndarray:
        """Embeddings of ``paths`` (rows in order); only paths not seen before are computed.
        Unreadable images get a zero vector."""
        new = [p for p in dict.fromkeys(paths) if p not in self._cache]
        if new:
            t = time.perf_counter()
            ds = ImageDataset([(p, -1) for p in new], self.transform)
            emb, ok = embed_dataset(self.model, ds, None, batch_size=self.batch_size, num_workers=self.num_workers,
                                    tta_flip=self.tta_flip, scales=self.scales, desc="second stage",
                                    precision=self.precision)
            emb[~ok] = 0.0
            self._cache.update(zip(new, emb))
            self.seconds += time.perf_counter() - t
        return np.stack([self._cache[p] for p in paths]) if paths else np.zeros((0, 0), np.float32)

    def scores(self, query_paths: Sequence[str], gallery_paths: Sequence[str], ids: np.ndarray) -> np.ndarray:
        """(Nq, n) second-model cosines of each query with its first ``candidates`` ids
        (``ids`` index ``gallery_paths``; NaN for padding)."""
        n = min(self.opts.candidates, ids.shape[1])
        head = ids[:, :n]
        used = np.unique(head[head >= 0])
        q = self.embed(list(query_paths))
        g_used = self.embed([gallery_paths[i] for i in used])
        g = np.zeros((len(gallery_paths), q.shape[1]), dtype=np.float32)
        g[used] = g_used
        from simsearch.retrieval.fusion import candidate_cosines

        return candidate_cosines(q, g, ids, n)

    def __repr__(self) -> str:
        return f"SecondStage({self.description}, w={self.opts.weight}, N={self.opts.candidates})"
