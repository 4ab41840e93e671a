"""Backbones, pooling, heads and the embedding model."""
from .backbones import Backbone, DataConfig, create_backbone
from .head import EmbeddingHead
from .model import EmbeddingModel, build_model
from .pooling import GeM

__all__ = ["Backbone", "DataConfig", "EmbeddingHead", "EmbeddingModel", "GeM", "build_model",
           "create_backbone"]
