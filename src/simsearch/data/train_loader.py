"""The training DataLoader from config: transforms (per domain), batch sampler and collate.

One place decides how training batches are made, so the engine only asks for a loader:
``data.sampler`` picks P-K or pair batches (with the pair-aware collate), and
``data.domain_aug`` gives query-domain and gallery-domain images their own pipelines.
"""
from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence

import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from simsearch.data.datasets import ImageDataset, collate_pairs_skip_bad, collate_skip_bad
from simsearch.data.domains import sample_domains
from simsearch.data.sampler import EpochBatchSampler, build_batch_sampler
from simsearch.data.transforms import (
    GALLERY,
    QUERY,
    DomainTransforms,
    build_gallery_domain_transform,
    build_query_domain_transform,
    build_transforms,
)

__all__ = ["build_train_dataset", "build_train_loader"]

log = logging.getLogger("simsearch.data")


def build_train_dataset(data: DictConfig, samples: Sequence[tuple[str, int]], size: int,
                        mean: Sequence[float], std: Sequence[float]) -> ImageDataset:
    """Training images with the train transform, or with per-domain transforms under domain_aug."""
    if not data.domain_aug:
        t_train = build_transforms(size, mean, std, train=True, scale_min=data.train_scale_min,
                                   hflip=data.hflip, color_jitter=data.color_jitter)
        return ImageDataset(samples, t_train)
    domains = sample_domains(samples, data)
    counts = Counter(domains)
    log.info("domain augmentation: %d query-domain (strong) and %d gallery-domain (light) images",
             counts[QUERY], counts[GALLERY])
    transforms = DomainTransforms({
        QUERY: build_query_domain_transform(
            size, mean, std, scale_min=data.train_scale_min, hflip=data.hflip,
            color_jitter=data.color_jitter, blur_p=data.query_blur_p, affine_p=data.query_affine_p,
            perspective_p=data.query_perspective_p),
        GALLERY: build_gallery_domain_transform(size, mean, std, hflip=data.hflip,
                                                color_jitter=data.color_jitter,
                                                resize_ratio=data.eval_resize_ratio),
    })
    return ImageDataset(samples, transforms, domains=domains)


def build_train_loader(cfg: DictConfig, samples: Sequence[tuple[str, int]], size: int,
                       mean: Sequence[float], std: Sequence[float], num_replicas: int = 1, rank: int = 0,
                       worker_init_fn: Callable[[int], None] | None = None,
                       ) -> tuple[DataLoader, EpochBatchSampler]:
    """This rank's training loader and its (resumable) batch sampler."""
    dataset = build_train_dataset(cfg.data, samples, size, mean, std)
    sampler = build_batch_sampler(cfg, dataset.labels, num_replicas, rank)
    collate = collate_pairs_skip_bad if cfg.data.sampler == "pairs" else collate_skip_bad
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=cfg.data.num_workers,
                        collate_fn=collate, worker_init_fn=worker_init_fn, persistent_workers=False,
                        pin_memory=torch.cuda.is_available())
    return loader, sampler
