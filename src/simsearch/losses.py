"""Metric-learning losses and the miner, built from config with pytorch-metric-learning.

Composition as in pytorch-metric-learning: a loss takes a distance (cosine similarity on our
unit-norm embeddings) and optionally miner tuples. Losses with parameters (ArcFace) are modules
whose weights the optimizer and the checkpoint pick up through ``LossWrapper``.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from omegaconf import DictConfig
from pytorch_metric_learning import distances, losses, miners

__all__ = ["LOSSES", "LossWrapper", "build_loss", "build_miner"]

LOSSES = ("circle", "multi_similarity", "triplet", "contrastive", "arcface")


def build_loss(cfg: DictConfig, num_classes: int, embed_dim: int) -> nn.Module:
    """The loss named by ``loss.name``; ``num_classes`` sizes ArcFace's class centres."""
    c = cfg.loss
    cos = distances.CosineSimilarity()
    if c.name == "circle":
        return losses.CircleLoss(m=c.circle_m, gamma=c.circle_gamma, distance=cos)
    if c.name == "multi_similarity":
        return losses.MultiSimilarityLoss(alpha=c.ms_alpha, beta=c.ms_beta, base=c.ms_base, distance=cos)
    if c.name == "triplet":
        return losses.TripletMarginLoss(margin=c.triplet_margin, distance=cos)
    if c.name == "contrastive":
        return losses.ContrastiveLoss(pos_margin=c.contrastive_pos_margin,
                                      neg_margin=c.contrastive_neg_margin, distance=cos)
    if c.name == "arcface":
        return losses.ArcFaceLoss(num_classes=num_classes, embedding_size=embed_dim,
                                  margin=c.arcface_margin, scale=c.arcface_scale)
    raise ValueError(f"loss.name: unknown loss '{c.name}' (choose one of {', '.join(LOSSES)})")


def build_miner(cfg: DictConfig) -> miners.BaseMiner | None:
    if cfg.loss.miner in (None, "none"):
        return None
    if cfg.loss.miner == "multi_similarity":
        return miners.MultiSimilarityMiner(epsilon=cfg.loss.miner_epsilon,
                                           distance=distances.CosineSimilarity())
    raise ValueError(f"loss.miner: unknown miner '{cfg.loss.miner}' (multi_similarity or null)")


class LossWrapper(nn.Module):
    """Loss plus miner; the miner acts only once ``set_epoch`` reaches ``miner_start_epoch``."""

    def __init__(self, loss: nn.Module, miner: nn.Module | None = None, miner_start_epoch: int = 0) -> None:
        super().__init__()
        self.loss = loss
        self.miner = miner
        self.miner_start_epoch = miner_start_epoch
        self.miner_active = False

    def set_epoch(self, epoch: int) -> None:
        self.miner_active = self.miner is not None and epoch >= self.miner_start_epoch

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        embeddings = embeddings.float()
        if self.miner_active:
            tuples = self.miner(embeddings, labels)
            return self.loss(embeddings, labels, tuples)
        return self.loss(embeddings, labels)
