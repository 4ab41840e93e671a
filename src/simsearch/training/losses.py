"""Metric-learning losses and the miner, built from config with pytorch-metric-learning.

Composition as in pytorch-metric-learning: a loss takes a distance (cosine similarity on our
unit-norm embeddings) and optionally miner tuples. Losses with parameters (ArcFace, the
cross-entropy classifier) are modules whose weights the optimizer and the checkpoint pick up
through ``LossWrapper``; the model's embedding (the classifier's input) is what retrieval uses.

Under the pair sampler (``data.sampler=pairs``) the batch is pairs at positions (2i, 2i+1) and
``LossWrapper`` hands exactly those pairs to the loss as a PML pair ``indices_tuple``.

With several processes the metric losses on P-K batches see every process's batch
(``train.gather_embeddings``, ``simsearch.training.gather``).
"""
from __future__ import annotations

import logging

import torch
import torch.nn as nn
import torch.nn.functional as F
from omegaconf import DictConfig
from pytorch_metric_learning import distances, losses, miners
from pytorch_metric_learning.utils import common_functions as c_f
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu

from simsearch.config import ConfigError, check_number
from simsearch.data.datasets import manifest_columns
from simsearch.training.gather import gather_across_ranks, world_size

log = logging.getLogger("simsearch.train")

__all__ = ["CLASSIFIER_LOSSES", "LOSSES", "PAIR_LOSSES", "ClassifierCrossEntropyLoss", "CosineEmbeddingLoss",
           "LossWrapper", "XBM_LOSSES", "build_loss", "build_loss_wrapper", "build_miner", "check_loss_config",
           "gathers_negatives", "position_pairs"]

LOSSES = ("circle", "multi_similarity", "triplet", "contrastive", "cosine_embedding", "arcface",
          "cross_entropy")
XBM_LOSSES = ("circle", "multi_similarity", "triplet", "contrastive")  # PML's CrossBatchMemory supports these
PAIR_LOSSES = ("contrastive", "cosine_embedding")  # the losses that learn from given pairs alone
CLASSIFIER_LOSSES = ("arcface", "cross_entropy")  # a classifier over the training classes


class CosineEmbeddingLoss(losses.BaseMetricLossFunction):
    """torch's ``nn.CosineEmbeddingLoss`` over pairs: 1 - cos for positives, max(0, cos - margin) else.

    PML has no cosine-embedding loss; this wraps torch's in PML's interface so it takes the
    pair sampler's pairs, a miner's pairs (triplets become pairs) or, with neither, every pair
    of the batch. The mean runs over all pairs, positive and negative together.
    """

    def __init__(self, margin: float = 0.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.margin = margin
        self.criterion = nn.CosineEmbeddingLoss(margin=margin, reduction="mean")

    def compute_loss(self, embeddings, labels, indices_tuple, ref_emb, ref_labels):
        a1, p, a2, n = lmu.convert_to_pairs(indices_tuple, labels, ref_labels)
        if len(a1) + len(a2) == 0:
            return self.zero_losses()
        x1 = torch.cat([embeddings[a1], embeddings[a2]])
        x2 = torch.cat([ref_emb[p], ref_emb[n]])
        target = torch.cat([torch.ones(len(a1)), -torch.ones(len(a2))]).to(embeddings)
        return {"loss": {"losses": self.criterion(x1, x2, target), "indices": None,
                         "reduction_type": "already_reduced"}}


class ClassifierCrossEntropyLoss(losses.BaseMetricLossFunction):
    """A Linear classifier over the embedding, trained with (label-smoothed) cross-entropy.

    PML has no plain softmax cross-entropy (its classifier losses normalise the weights and add
    margins or temperatures), so this is written here in PML's interface: the classifier's
    weights live in the loss, like ArcFace's centres, and a miner weights the samples the way
    PML's LargeMarginSoftmaxLoss does. Retrieval uses the classifier's input, the embedding.
    """

    def __init__(self, num_classes: int, embedding_size: int, label_smoothing: float = 0.0,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.classifier = nn.Linear(embedding_size, num_classes)
        self.label_smoothing = label_smoothing

    def get_logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.classifier(embeddings)

    def compute_loss(self, embeddings, labels, indices_tuple, ref_emb, ref_labels):
        c_f.labels_required(labels)
        c_f.ref_not_supported(embeddings, labels, ref_emb, ref_labels)
        weights = lmu.convert_to_weights(indices_tuple, labels, dtype=embeddings.dtype)
        per_sample = F.cross_entropy(self.get_logits(embeddings), labels, reduction="none",
                                     label_smoothing=self.label_smoothing)
        return {"loss": {"losses": per_sample * weights, "indices": c_f.torch_arange_from_size(embeddings),
                         "reduction_type": "element"}}


def build_loss(cfg: DictConfig, num_classes: int, embed_dim: int) -> nn.Module:
    """The loss named by ``loss.name``; ``num_classes`` sizes the classifier losses' weights."""
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
    if c.name == "cosine_embedding":
        return CosineEmbeddingLoss(margin=c.cosine_margin)
    if c.name == "arcface":
        return losses.ArcFaceLoss(num_classes=num_classes, embedding_size=embed_dim,
                                  margin=c.arcface_margin, scale=c.arcface_scale)
    if c.name == "cross_entropy":
        return ClassifierCrossEntropyLoss(num_classes, embed_dim, label_smoothing=c.ce_label_smoothing)
    raise ValueError(f"loss.name: unknown loss '{c.name}' (choose one of {', '.join(LOSSES)})")


def build_miner(cfg: DictConfig) -> miners.BaseMiner | None:
    if cfg.loss.miner in (None, "none"):
        return None
    if cfg.loss.miner == "multi_similarity":
        return miners.MultiSimilarityMiner(epsilon=cfg.loss.miner_epsilon,
                                           distance=distances.CosineSimilarity())
    raise ValueError(f"loss.miner: unknown miner '{cfg.loss.miner}' (multi_similarity or null)")


def check_loss_config(cfg: DictConfig) -> None:
    """Fail at startup, naming the keys, when the loss cannot work with the sampler or the data."""
    name, sampler = cfg.loss.name, cfg.data.sampler
    if name not in LOSSES:
        raise ConfigError(f"loss.name: unknown loss '{name}' (choose one of {', '.join(LOSSES)})")
    if sampler == "pairs":
        if name not in PAIR_LOSSES:
            raise ConfigError(f"loss.name={name} does not learn from pairs; data.sampler=pairs works with "
                              f"loss.name {' or '.join(PAIR_LOSSES)} (or use data.sampler=pk)")
        if cfg.loss.miner not in (None, "none"):
            raise ConfigError(f"loss.miner={cfg.loss.miner} would replace the sampled pairs; set "
                              "loss.miner=null with data.sampler=pairs")
    if sampler == "pk" and name not in CLASSIFIER_LOSSES and cfg.train.batch_k < 2:
        raise ConfigError(f"train.batch_k: must be >= 2 for loss.name={name}, got {cfg.train.batch_k} (a metric "
                          "loss learns from two images of a class in one batch; the classifier losses "
                          f"{' and '.join(CLASSIFIER_LOSSES)} take 1)")
    check_number("loss.xbm_size", cfg.loss.xbm_size, 0, why="0 = off")
    check_number("loss.miner_epsilon", cfg.loss.miner_epsilon, 0)
    xbm = cfg.loss.xbm_size
    if xbm:
        if name not in XBM_LOSSES or sampler == "pairs":
            raise ConfigError(f"loss.xbm_size={xbm}: a cross-batch memory works with loss.name "
                              f"{', '.join(XBM_LOSSES)} on P-K batches (data.sampler=pk), not {name} / {sampler}")
        batch = cfg.train.batch_p * cfg.train.batch_k
        if xbm < batch:
            raise ConfigError(f"loss.xbm_size={xbm} must hold at least one batch "
                              f"(train.batch_p * train.batch_k = {batch}), or be 0 (off)")
    if cfg.train.gather_embeddings is True and not gathers_negatives(cfg):
        raise ConfigError(f"train.gather_embeddings=true: loss.name={name} with data.sampler={sampler} has no "
                          "negatives to gather (a classifier's loss of an image depends on that image and the "
                          "class weights alone; the pair sampler's losses see only the sampled pairs); set it "
                          "to null or false")
    if not 0.0 <= cfg.loss.ce_label_smoothing < 1.0:
        raise ConfigError(f"loss.ce_label_smoothing must be in [0, 1), got {cfg.loss.ce_label_smoothing}")
    # Every loss here needs class labels: positives are same-class images, classifiers predict them.
    if cfg.data.train_csv is not None:
        columns, label = manifest_columns(cfg.data.train_csv), cfg.data.columns.label
        if label not in columns:
            raise ConfigError(f"loss.name={name} needs class labels, but data.train_csv={cfg.data.train_csv} "
                              f"has no '{label}' column (data.columns.label; "
                              f"found: {', '.join(columns) or 'nothing'})")


def gathers_negatives(cfg: DictConfig) -> bool:
    """Whether the loss compares the images of a batch with each other, so that the other
    processes' batches are more negatives: the metric losses on P-K batches. The classifier
    losses (one image against the class weights) and the pair sampler's given pairs are not."""
    return cfg.loss.name not in CLASSIFIER_LOSSES and cfg.data.sampler != "pairs"


def position_pairs(labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """PML pair tuple (a1, p, a2, n) of the pairs at positions (2i, 2i+1), split by label match."""
    if len(labels) % 2:
        raise ValueError(f"a pair batch needs an even number of embeddings, got {len(labels)}")
    first = torch.arange(0, len(labels), 2, device=labels.device)
    second = first + 1
    same = labels[first] == labels[second]
    return first[same], second[same], first[~same], second[~same]


class LossWrapper(nn.Module):
    """Loss plus miner; the miner acts only once ``set_epoch`` reaches ``miner_start_epoch``.

    With ``pairs`` the batch is the pair sampler's: the loss sees only the pairs at positions
    (2i, 2i+1), positive where the two labels match.

    With ``xbm_size`` > 0 the loss runs inside PML's ``CrossBatchMemory`` (XBM, Wang et al.,
    "Cross-Batch Memory for Embedding Learning", CVPR 2020): each batch is compared with the
    last ``xbm_size`` embeddings too, so a small CPU batch sees many more negatives. The miner,
    once active, mines over batch x memory.

    With ``gather`` the embeddings and labels of all processes are concatenated first
    (``gather_across_ranks``), so the miner, the memory and the loss see the whole batch on every
    rank, and DDP's averaged gradient is that of one process's loss on the concatenated batch.
    With one process it changes nothing.
    """

    def __init__(self, loss: nn.Module, miner: nn.Module | None = None, miner_start_epoch: int = 0,
                 pairs: bool = False, xbm_size: int = 0, embed_dim: int | None = None,
                 gather: bool = False) -> None:
        super().__init__()
        self.gather = gather
        self.loss = loss
        self.miner = miner
        self.miner_start_epoch = miner_start_epoch
        self.miner_active = False
        self.pairs = pairs
        self.xbm = None
        if xbm_size:
            if embed_dim is None:
                raise ValueError("a cross-batch memory needs the embedding width (embed_dim)")
            self.xbm = losses.CrossBatchMemory(loss, embed_dim, memory_size=xbm_size)
            # the memory is refilled in a few steps; keeping it out of the weights keeps checkpoints small
            for name in ("embedding_memory", "label_memory"):
                self.xbm._non_persistent_buffers_set.add(name)

    def set_epoch(self, epoch: int) -> None:
        self.miner_active = self.miner is not None and epoch >= self.miner_start_epoch

    def reset_memory(self) -> None:
        """Empty the cross-batch memory (a new training stage: old embeddings are stale)."""
        if self.xbm is not None:
            self.xbm.reset_queue()
            for name in ("embedding_memory", "label_memory"):
                self.xbm._non_persistent_buffers_set.add(name)

    def xbm_position(self) -> dict | None:
        """The memory's contents and write position, for an exact resume (None without XBM)."""
        if self.xbm is None:
            return None
        return {"embeddings": self.xbm.embedding_memory.detach().cpu(), "labels": self.xbm.label_memory.cpu(),
                "queue_idx": int(self.xbm.queue_idx), "filled": bool(self.xbm.has_been_filled)}

    def set_xbm_position(self, state: dict) -> None:
        if self.xbm is None:
            return
        self.xbm.embedding_memory = state["embeddings"].clone()
        self.xbm.label_memory = state["labels"].clone()
        self.xbm.queue_idx, self.xbm.has_been_filled = int(state["queue_idx"]), bool(state["filled"])

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        embeddings = embeddings.float()
        if self.gather:
            embeddings, labels = gather_across_ranks(embeddings, labels)
        if self.pairs:
            return self.loss(embeddings, labels, position_pairs(labels))
        if self.xbm is not None:
            self.xbm.miner = self.miner if self.miner_active else None
            return self.xbm(embeddings, labels)
        if self.miner_active:
            tuples = self.miner(embeddings, labels)
            return self.loss(embeddings, labels, tuples)
        return self.loss(embeddings, labels)


def build_loss_wrapper(cfg: DictConfig, num_classes: int, embed_dim: int) -> LossWrapper:
    """The configured loss, miner, pair mode and cross-batch memory, ready for training
    (check_loss_config first); ``embed_dim`` is the model's (``model.embed_dim`` may be null)."""
    if cfg.loss.name in CLASSIFIER_LOSSES and num_classes < 2:
        raise ConfigError(f"loss.name={cfg.loss.name} classifies the training classes, but the training "
                          f"data (data.train_dir / data.train_csv) has {num_classes}")
    pairs = cfg.data.sampler == "pairs"
    # null: on whenever there are several processes (with one there is nothing to gather)
    gather = gathers_negatives(cfg) and cfg.train.gather_embeddings is not False
    xbm, batch, ranks = cfg.loss.xbm_size, cfg.train.batch_p * cfg.train.batch_k, world_size()
    if gather and xbm and xbm < batch * ranks:
        raise ConfigError(f"loss.xbm_size={xbm} must hold at least one batch of all {ranks} processes "
                          f"(train.batch_p * train.batch_k * processes = {batch * ranks}), as "
                          "train.gather_embeddings gathers them; raise it or set train.gather_embeddings=false")
    if gather and ranks > 1:
        log.info("loss: miner, memory and loss see the embeddings of all %d processes' batches "
                 "(train.gather_embeddings)", ranks)
    return LossWrapper(build_loss(cfg, num_classes, embed_dim), None if pairs else build_miner(cfg),
                       cfg.train.miner_start_epoch, pairs=pairs, xbm_size=xbm,
                       embed_dim=embed_dim, gather=gather)
