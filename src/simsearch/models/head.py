"""Embedding head: Linear -> BatchNorm1d -> Dropout -> L2 normalisation."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["EmbeddingHead"]


class EmbeddingHead(nn.Module):
    """Projects pooled features to a unit-norm embedding, so cosine = inner product in FAISS."""

    def __init__(self, in_dim: int, embed_dim: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.fc = nn.Linear(in_dim, embed_dim)
        self.bn = nn.BatchNorm1d(embed_dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(self.bn(self.fc(x.float())))
        return F.normalize(x, dim=1)
