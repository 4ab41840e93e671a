"""Embedding extraction with flip / multi-scale TTA, sharded over Accelerate processes.

Each process embeds every ``world``-th image; the shards are gathered with their dataset
indices and put back in order, so no image is duplicated or dropped whatever the process count
(Accelerate's own even-split padding would duplicate images at the tail).

The forward runs in the precision :mod:`simsearch.retrieval.device` resolves (``infer.precision``:
auto, fp32, bf16, fp16, and the launch flag) under ``torch.autocast``; embeddings come out float32
and unit length whatever the precision.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from simsearch.config import ConfigError, check_choice, check_number
from simsearch.data import collate_skip_bad
from simsearch.retrieval.device import (
    INFER_PRECISIONS,
    autocast,
    embedding_device,
    precision_of,
    requested_precision,
    resolve_precision,
)

__all__ = ["check_embedding_config", "embed_batch", "embed_dataset"]


def check_embedding_config(cfg: DictConfig) -> None:
    """Range-check the keys that decide how images are embedded (validation, inference, indexes)."""
    check_number("infer.batch_size", cfg.infer.batch_size, 1)
    check_number("data.num_workers", cfg.data.num_workers, 0, why="0 = load images in the main process")
    check_number("data.image_size", cfg.data.image_size, 1, null_ok=True, why="null = the backbone's own")
    check_number("data.eval_resize_ratio", cfg.data.eval_resize_ratio, 1)
    check_choice("infer.precision", requested_precision(cfg), INFER_PRECISIONS)
    scales = list(cfg.infer.tta_scales)
    if not scales:
        raise ConfigError("infer.tta_scales: must list at least one scale, got [] ([1.0] = the plain size)")
    for s in scales:
        check_number("infer.tta_scales", s, 0, low_open=True, why="input size multipliers")


@torch.no_grad()
def embed_batch(model: torch.nn.Module, images: torch.Tensor, tta_flip: bool = False,
                scales: tuple[float, ...] = (1.0,), precision: str = "fp32") -> torch.Tensor:
    """Mean of the embeddings over scales (and mirror images), renormalised to unit length, float32.

    ``precision``: fp32 (no autocast of its own: an enclosing one stays in charge), bf16, fp16, or
    auto for the images' device (:func:`simsearch.retrieval.device.resolve_precision`).
    """
    if precision not in ("fp32", "bf16", "fp16"):
        precision = resolve_precision(precision, images.device)
    total = None
    with autocast(precision, images.device.type):
        for s in scales:
            x = images if s == 1.0 else F.interpolate(images, scale_factor=s, mode="bilinear",
                                                      align_corners=False, antialias=s < 1.0)
            views = [x, torch.flip(x, dims=[3])] if tta_flip else [x]
            for v in views:
                e = model(v).float()
                total = e if total is None else total + e
    return F.normalize(total, dim=1)


@torch.no_grad()
def embed_dataset(model: torch.nn.Module, dataset: Dataset, accelerator=None, batch_size: int = 64,
                  num_workers: int = 0, tta_flip: bool = False, scales: tuple[float, ...] = (1.0,),
                  desc: str = "embedding", precision: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Return (embeddings (N, D) float32 in dataset order, ok (N,) bool: False = unreadable).

    The images go to the accelerator's device, or without one to the model's (see
    :func:`simsearch.retrieval.device.place_model`). ``precision``: ``infer.precision`` (auto, fp32,
    bf16, fp16), resolved for that device; None = the accelerator's mixed precision (training's
    validation), fp32 without one.
    """
    rank = accelerator.process_index if accelerator is not None else 0
    world = accelerator.num_processes if accelerator is not None else 1
    device = embedding_device(model, accelerator)
    if precision is None:
        precision = precision_of(accelerator) if accelerator is not None else "fp32"
    else:
        precision = resolve_precision(precision, device)
    was_training = model.training
    model.eval()
    shard = Subset(dataset, list(range(rank, len(dataset), world)))
    loader = DataLoader(shard, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_skip_bad)
    embs, idxs = [], []
    show = accelerator is None or accelerator.is_local_main_process
    for images, _labels, indices, _bad in tqdm(loader, desc=desc, disable=not show, dynamic_ncols=True):
        if images.numel() == 0:
            continue
        images = images.to(device, non_blocking=True)
        embs.append(embed_batch(model, images, tta_flip, tuple(scales), precision))
        idxs.append(indices.to(device))
    model.train(was_training)
    dim = model.embed_dim if hasattr(model, "embed_dim") else embs[0].shape[1]
    emb = torch.cat(embs) if embs else torch.zeros(0, dim, device=device)
    idx = torch.cat(idxs) if idxs else torch.zeros(0, dtype=torch.long, device=device)
    if world > 1:
        emb, idx = _gather(emb, idx, accelerator)
    out = np.zeros((len(dataset), dim), dtype=np.float32)
    ok = np.zeros(len(dataset), dtype=bool)
    idx_np = idx.cpu().numpy()
    out[idx_np] = emb.cpu().numpy()
    ok[idx_np] = True
    return out, ok


def _gather(emb: torch.Tensor, idx: torch.Tensor, accelerator) -> tuple[torch.Tensor, torch.Tensor]:
    # Shards differ in length (and in unreadable images): pad with index -1, gather, then drop.
    emb = accelerator.pad_across_processes(emb, dim=0, pad_index=0)
    idx = accelerator.pad_across_processes(idx, dim=0, pad_index=-1)
    emb, idx = accelerator.gather(emb), accelerator.gather(idx)
    keep = idx >= 0
    return emb[keep], idx[keep]
