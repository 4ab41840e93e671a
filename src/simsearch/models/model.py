"""The embedding model: backbone -> pooling -> head -> unit-norm embedding."""
from __future__ import annotations

import torch
import torch.nn as nn
from omegaconf import DictConfig

from .backbones import Backbone, create_backbone
from .head import EmbeddingHead
from .pooling import build_pooling

__all__ = ["EmbeddingModel", "build_model"]


class EmbeddingModel(nn.Module):
    """Returns (B, D) unit-norm embeddings in train and eval mode; the loss lives outside."""

    def __init__(self, backbone: Backbone, pooling: str = "gem", gem_p: float = 3.0,
                 gem_learnable: bool = True, embed_dim: int = 512, dropout: float = 0.1) -> None:
        super().__init__()
        self.backbone = backbone
        self.pooling_name = pooling
        self.pool = build_pooling(pooling, gem_p, gem_learnable)
        self.head = EmbeddingHead(backbone.num_features, embed_dim, dropout)
        self.embed_dim = embed_dim

    @property
    def data_config(self):
        return self.backbone.data_config

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.pooling_name == "cls":
            pooled = self.backbone.forward_cls(images)
        else:
            pooled = self.pool(self.backbone.forward_features(images))
        return self.head(pooled)

    def layer_id(self, param_name: str) -> int:
        """LLRD depth of a parameter; pooling and head sit above the backbone (base LR)."""
        if param_name.startswith("backbone."):
            return self.backbone.layer_id(param_name.removeprefix("backbone."))
        return self.backbone.num_layers + 1


def build_model(cfg: DictConfig) -> EmbeddingModel:
    """Build from the ``model`` section of a config."""
    m = cfg.model
    backbone = create_backbone(m.backbone, m.pretrained)
    if m.grad_checkpointing:
        backbone.set_grad_checkpointing(True)
    return EmbeddingModel(backbone, m.pooling, m.gem_p, m.gem_learnable, m.embed_dim, m.dropout)
