"""Embedding head: Linear -> BatchNorm1d -> Dropout -> L2 normalisation."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["HEAD_INITS", "EmbeddingHead"]

HEAD_INITS = ("random", "identity")


class EmbeddingHead(nn.Module):
    """Projects pooled features to a unit-norm embedding, so cosine = inner product in FAISS.

    ``init="identity"`` (in_dim == embed_dim) makes the untrained head pass the pooled features
    through unchanged (BatchNorm's running statistics start at mean 0, variance 1), so the
    untrained model is the backbone's own zero-shot retrieval and fine-tuning starts from it
    rather than from a random projection that first has to be undone (Kumar et al., "Fine-Tuning
    can Distort Pretrained Features", ICLR 2022).
    """

    def __init__(self, in_dim: int, embed_dim: int, dropout: float = 0.1, init: str = "random") -> None:
        super().__init__()
        if init not in HEAD_INITS:
            raise ValueError(f"model.head_init: '{init}' must be one of {', '.join(HEAD_INITS)}")
        if init == "identity" and in_dim != embed_dim:
            raise ValueError(f"model.head_init=identity needs model.embed_dim equal to the backbone's "
                             f"feature width {in_dim} (or null), got {embed_dim}")
        self.fc = nn.Linear(in_dim, embed_dim)
        self.bn = nn.BatchNorm1d(embed_dim)
        self.drop = nn.Dropout(dropout)
        if init == "identity":
            with torch.no_grad():
                self.fc.weight.copy_(torch.eye(embed_dim))
                self.fc.bias.zero_()
            # eval-mode BatchNorm divides by sqrt(var + eps): make that exactly 1 at the start
            self.bn.running_var.fill_(1.0 - self.bn.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(self.bn(self.fc(x.float())))
        return F.normalize(x, dim=1)
