"""Backbones, pooling, heads and the embedding model."""
from simsearch.models.backbones import Backbone, DataConfig, create_backbone
from simsearch.models.head import EmbeddingHead
from simsearch.models.model import EmbeddingModel, build_model
from simsearch.models.pooling import GeM

__all__ = ["Backbone", "DataConfig", "EmbeddingHead", "EmbeddingModel", "GeM", "build_model",
           "create_backbone"]
