"""The embedding model: backbone -> pooling -> head -> unit-norm embedding."""
from __future__ import annotations

import logging

import torch
import torch.nn as nn
from omegaconf import DictConfig, OmegaConf

from simsearch.models.backbones import Backbone, create_backbone
from simsearch.models.head import EmbeddingHead
from simsearch.models.lora import apply_lora
from simsearch.models.pooling import build_pooling

__all__ = ["EmbeddingModel", "build_model", "count_parameters", "lora_enabled"]

log = logging.getLogger("simsearch.models")


class EmbeddingModel(nn.Module):
    """Returns (B, D) unit-norm embeddings in train and eval mode; the loss lives outside."""

    def __init__(self, backbone: Backbone, pooling: str = "gem", gem_p: float = 3.0,
                 gem_learnable: bool = True, embed_dim: int | None = 512, dropout: float = 0.1,
                 head_init: str = "random") -> None:
        super().__init__()
        self.backbone = backbone
        self.pooling_name = pooling
        self.pool = build_pooling(pooling, gem_p, gem_learnable)
        embed_dim = embed_dim or backbone.num_features  # null: the backbone's own width
        self.head = EmbeddingHead(backbone.num_features, embed_dim, dropout, init=head_init)
        self.embed_dim = embed_dim
        self.cache_top = 0  # backbone blocks above the cached features (training/feature_cache.py)

    @property
    def data_config(self):
        return self.backbone.data_config

    def forward(self, images: torch.Tensor, features: bool = False) -> torch.Tensor:
        """Embeddings of ``images``, or with ``features=True`` of cached :meth:`backbone_features`
        passed in their place (a keyword, so that a DDP-wrapped model still syncs the head's
        gradients; the argument keeps the name ``images`` that the ONNX export's axes refer to)."""
        return self.forward_from_features(images if features else self.backbone_features(images))

    def backbone_features(self, images: torch.Tensor) -> torch.Tensor:
        """What the frozen part computes: the backbone below its last ``cache_top`` blocks (all of
        it at 0: spatial features, or the CLS vector for ``cls`` pooling).

        A training stage that trains only the head or the top blocks caches these
        (feature_cache.py) and trains :meth:`forward_from_features` on them, so it pays for no
        frozen forward per epoch. ``forward_from_features(backbone_features(x))`` is ``forward(x)``
        whatever ``cache_top`` is.
        """
        if self.pooling_name == "cls":
            if self.cache_top:
                raise ValueError("model.pooling=cls: features can be cached for head-only stages only")
            return self.backbone.forward_cls(images)
        return self.backbone.forward_lower(images, self.cache_top)

    def forward_from_features(self, features: torch.Tensor) -> torch.Tensor:
        """The backbone's top ``cache_top`` blocks, pooling (GeM over maps or tokens; nothing for a
        CLS vector) and the head."""
        if self.pooling_name == "cls":
            return self.head(features)
        return self.head(self.pool(self.backbone.forward_upper(features, self.cache_top)))

    def train(self, mode: bool = True) -> "EmbeddingModel":
        """As nn.Module.train, but BatchNorm layers whose weights are frozen (a head-only stage,
        LoRA) stay in eval mode: their running statistics are part of the frozen backbone."""
        super().train(mode)
        if mode:
            for m in self.backbone.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine and \
                        not any(p.requires_grad for p in m.parameters(recurse=False)):
                    m.eval()
        return self

    def layer_id(self, param_name: str) -> int:
        """LLRD depth of a parameter; pooling and head sit above the backbone (base LR)."""
        if param_name.startswith("backbone."):
            return self.backbone.layer_id(param_name.removeprefix("backbone."))
        return self.backbone.num_layers + 1


def lora_enabled(cfg: DictConfig) -> bool:
    """``model.lora.enabled``; False for configs saved before the key existed."""
    return bool(OmegaConf.select(cfg, "model.lora.enabled", default=False))


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts, as reported in train.log and the checkpoint's meta.json."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def build_model(cfg: DictConfig) -> EmbeddingModel:
    """Build from the ``model`` section of a config (with LoRA adapters when ``model.lora.enabled``)."""
    m = cfg.model
    backbone = create_backbone(m.backbone, m.pretrained)
    if lora_enabled(cfg):
        s = apply_lora(backbone, m.lora)
        log.info("LoRA rank %d, alpha %g on %s of %d block(s); the rest of the backbone is frozen",
                 s.rank, s.alpha, "/".join(s.targets), len(s.blocks))
        if hasattr(backbone, "_layer_groups"):  # timm: LLRD groups again, over the adapter names
            backbone._groups = backbone._layer_groups()
    if m.grad_checkpointing:
        backbone.set_grad_checkpointing(True)
    return EmbeddingModel(backbone, m.pooling, m.gem_p, m.gem_learnable, m.embed_dim, m.dropout,
                          head_init=OmegaConf.select(cfg, "model.head_init", default="random"))
