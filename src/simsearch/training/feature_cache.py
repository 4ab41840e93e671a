"""Backbone features cached for head-only training stages (``train.feature_cache``).

A stage that trains only the head (and GeM's p) on a frozen backbone sees the same backbone
output for the same input every epoch, so paying a backbone forward per step is waste: on two
CPU cores it is nearly all of the cost. Here each training image is passed through the frozen
backbone once per *view*: view 0 is the eval transform (the clean image), views 1.. are draws of
the training augmentation, each pipeline reseeded per view. An epoch of a cached stage then runs
the same P-K batches as an uncached one, each image taking one of its cached views (drawn from
(seed, epoch, batch), so resuming mid-epoch draws the same views), through pooling and the head
only. The validation images are cached once too (clean view), so validating costs no backbone
forward either. Features are kept before pooling, so GeM's p still trains, in float16 on the CPU.

Under several processes every rank builds the whole cache itself (no gather of large maps): a
head stage on one GPU is already seconds; the cache is what makes it affordable on a CPU.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from simsearch.data import ImageDataset, collate_skip_bad
from simsearch.data.sampler import EpochBatchSampler

__all__ = ["CACHE_DTYPES", "FeatureCache", "backbone_feature_shape", "cache_bytes", "extract_backbone_features"]

CACHE_DTYPES = {"float16": torch.float16, "float32": torch.float32}

log = logging.getLogger("simsearch.train")


def backbone_feature_shape(model: torch.nn.Module, image_size: int, device: torch.device) -> tuple[int, ...]:
    """Shape of one image's backbone features (before pooling), from a dummy forward."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = model.backbone_features(torch.zeros(1, 3, image_size, image_size, device=device))
    model.train(was_training)
    return tuple(out.shape[1:])


@torch.no_grad()
def extract_backbone_features(model: torch.nn.Module, dataset: ImageDataset, batch_size: int,
                              num_workers: int, device: torch.device, desc: str = "caching features",
                              show: bool = True, dtype: torch.dtype = torch.float16,
                              ) -> tuple[torch.Tensor, np.ndarray]:
    """(features (N, ...) in ``dtype`` on the CPU, ok (N,) bool) for every image of ``dataset``, in order."""
    was_training = model.training
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_skip_bad)
    out: torch.Tensor | None = None
    ok = np.zeros(len(dataset), dtype=bool)
    for images, _labels, indices, _bad in tqdm(loader, desc=desc, disable=not show, dynamic_ncols=True):
        if images.numel() == 0:
            continue
        feats = model.backbone_features(images.to(device)).float().cpu().to(dtype)
        if out is None:
            out = torch.zeros((len(dataset), *feats.shape[1:]), dtype=dtype)
        out[indices] = feats
        ok[indices.numpy()] = True
    model.train(was_training)
    if out is None:
        raise ValueError(f"{desc}: none of the {len(dataset)} images could be read")
    return out, ok


@dataclass
class FeatureCache:
    """``train`` (V, N, ...) backbone features of the training images under V views, ``ok`` (N,)
    for readable ones; ``val`` (M, ...) of the validation images (clean view) and ``val_ok``."""

    train: torch.Tensor
    ok: np.ndarray
    labels: torch.Tensor
    seed: int
    val: torch.Tensor | None = None
    val_ok: np.ndarray | None = None

    @property
    def views(self) -> int:
        return int(self.train.shape[0])

    @classmethod
    def build(cls, model: torch.nn.Module, train_sets: list[ImageDataset], val_set: ImageDataset | None,
              batch_size: int, num_workers: int, device: torch.device, seed: int,
              show: bool = True, dtype: torch.dtype = torch.float16) -> "FeatureCache":
        """One pass of the frozen backbone over each view's dataset (same samples, its own transform)."""
        views, oks = [], []
        for v, ds in enumerate(train_sets):
            feats, ok = extract_backbone_features(model, ds, batch_size, num_workers, device,
                                                  desc=f"caching features, view {v + 1}/{len(train_sets)}",
                                                  show=show, dtype=dtype)
            views.append(feats)
            oks.append(ok)
        labels = torch.tensor(train_sets[0].labels, dtype=torch.long)
        cache = cls(torch.stack(views), np.logical_and.reduce(oks), labels, seed)
        if val_set is not None:
            cache.val, cache.val_ok = extract_backbone_features(model, val_set, batch_size, num_workers, device,
                                                                desc="caching validation features", show=show,
                                                                dtype=dtype)
        size = cache.train.element_size()
        gb = (cache.train.numel() + (cache.val.numel() if cache.val is not None else 0)) * size / 1e9
        log.info("feature cache: %d view(s) of %d training images%s, %.2f GB", cache.views,
                 len(cache.ok), f" and {len(val_set)} validation images" if val_set is not None else "", gb)
        return cache

    def view_of(self, epoch: int, batch: int, n: int) -> np.ndarray:
        """The view each of ``n`` images of a batch takes: a pure function of (seed, epoch, batch)."""
        return np.random.default_rng([self.seed, epoch, batch]).integers(0, self.views, n)

    def batches(self, sampler: EpochBatchSampler, epoch: int) -> Iterator[tuple[torch.Tensor, ...]]:
        """This rank's batches of the epoch, as ``collate_skip_bad`` gives them, from the cache.

        Unreadable images were reported when the cache was built; here they are simply left out.
        """
        first = sampler.start_batch
        for i, indices in enumerate(sampler, start=first):
            idx = np.asarray(indices, dtype=np.int64)
            views = self.view_of(epoch, i, len(idx))
            keep = self.ok[idx]
            idx, views = idx[keep], views[keep]
            feats = self.train[torch.from_numpy(views), torch.from_numpy(idx)].float()
            empty = torch.empty(0, dtype=torch.long)
            yield feats, self.labels[idx], torch.from_numpy(idx), empty


def cache_bytes(views: int, n_train: int, n_val: int, feature_shape: tuple[int, ...],
                bytes_per_value: int = 2) -> int:
    """Memory of a cache of ``views`` views of ``n_train`` images plus ``n_val``."""
    return (views * n_train + n_val) * math.prod(feature_shape) * bytes_per_value
