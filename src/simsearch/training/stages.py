"""Staged training (``train.stages``): which part of the backbone trains, for how long, at what LR.

A stage is a mapping in the config, for example::

    stages:
      - {epochs: 2, train: head}                                # backbone frozen, head only
      - {epochs: 3, unfreeze_last: 2, backbone_lr: 1.0e-5}      # + the last 2 blocks at their own LR

Keys: ``epochs`` (required), ``train`` (``head`` or ``all``), ``unfreeze_last`` (N blocks, counted
from the top of the backbone's LLRD grouping: ViT blocks, CNN stages), ``lr`` (head, GeM p, loss
parameters; default ``train.lr``) and ``backbone_lr`` (one LR for every unfrozen backbone
parameter; default: layer-wise decay from ``lr``). A stage with neither ``train`` nor
``unfreeze_last`` trains everything. Each stage gets a fresh AdamW and its own warm-up + cosine
schedule over its epochs. The stages' epochs must add up to ``train.epochs`` (or
``train.epochs=0``, which saves the untrained model): the run length is never changed silently.

With ``train.stages: []`` one implicit stage covers ``train.epochs`` and freezes nothing, which
is the single-stage recipe.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch.nn as nn
from omegaconf import DictConfig, OmegaConf

__all__ = ["Stage", "apply_stage", "describe_stage", "parse_stages", "stage_index"]

KEYS = ("epochs", "train", "unfreeze_last", "lr", "backbone_lr")


@dataclass(frozen=True)
class Stage:
    """``unfreeze``: None = leave the model as built (implicit stage); 0 = head only; N = last N
    blocks (and the backbone's final norm); num_blocks + 1 = the whole backbone."""

    epochs: int
    first_epoch: int
    unfreeze: int | None
    lr: float
    backbone_lr: float | None = None


def _number(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{key}: {value!r} must be a positive number")
    return float(value)


def _one_stage(raw: Any, i: int, first: int, num_blocks: int, base_lr: float) -> Stage:
    key = f"train.stages[{i}]"
    if not isinstance(raw, Mapping):
        raise ValueError(f"{key}: {raw!r} must be a mapping like {{epochs: 2, train: head}}")
    for k in raw:
        if k not in KEYS:
            raise ValueError(f"{key}.{k}: unknown stage key (known: {', '.join(KEYS)})")
    if "epochs" not in raw:
        raise ValueError(f"{key}.epochs: missing; every stage needs its number of epochs")
    epochs = raw["epochs"]
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"{key}.epochs: {epochs!r} must be a positive integer")
    train, n = raw.get("train"), raw.get("unfreeze_last")
    if train not in (None, "head", "all"):
        raise ValueError(f"{key}.train: '{train}' must be head (backbone frozen) or all")
    if n is not None:
        if train is not None:
            raise ValueError(f"{key}.unfreeze_last: give either train: {train} or unfreeze_last, not both")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"{key}.unfreeze_last: {n!r} must be a positive number of blocks")
        if n > num_blocks:
            raise ValueError(f"{key}.unfreeze_last: {n} blocks do not exist (backbone has {num_blocks} blocks)")
    unfreeze = 0 if train == "head" else n if n is not None else num_blocks + 1
    backbone_lr = raw.get("backbone_lr")
    if backbone_lr is not None:
        if unfreeze == 0:
            raise ValueError(f"{key}.backbone_lr: this stage trains the head only (train: head)")
        backbone_lr = _number(backbone_lr, f"{key}.backbone_lr")
    lr = _number(raw["lr"], f"{key}.lr") if raw.get("lr") is not None else base_lr
    return Stage(epochs, first, unfreeze, lr, backbone_lr)


def parse_stages(cfg: DictConfig, num_blocks: int) -> list[Stage]:
    """Validate ``train.stages`` against the built backbone; errors name ``train.stages[i].key``."""
    raw = OmegaConf.select(cfg, "train.stages", default=None) or []
    raw = OmegaConf.to_container(raw, resolve=True) if OmegaConf.is_config(raw) else list(raw)
    t = cfg.train
    if not raw:
        return [Stage(t.epochs, 0, None, t.lr)]
    if OmegaConf.select(cfg, "model.lora.enabled", default=False):
        raise ValueError("train.stages: staged unfreezing cannot be combined with model.lora.enabled=true "
                         "(LoRA decides what trains); use one or the other")
    stages, first = [], 0
    for i, item in enumerate(raw):
        stages.append(_one_stage(item, i, first, num_blocks, t.lr))
        first += stages[-1].epochs
    if t.epochs not in (0, first):
        raise ValueError(f"train.epochs={t.epochs} but train.stages add up to {first} epochs; set "
                         f"train.epochs={first} (or 0 to save the untrained model)")
    return stages


def stage_index(stages: list[Stage], epoch: int) -> int:
    """The stage that trains ``epoch`` (the last one past the end)."""
    for i, s in enumerate(stages):
        if epoch < s.first_epoch + s.epochs:
            return i
    return len(stages) - 1


def apply_stage(model: nn.Module, stage: Stage) -> None:
    """Set ``requires_grad`` on the backbone for the stage; head and pooling keep their own flags."""
    if stage.unfreeze is None:
        return
    backbone = model.backbone
    lowest = backbone.num_layers + 1 - stage.unfreeze  # layer ids >= lowest train (blocks are 1..L)
    for name, p in backbone.named_parameters():
        p.requires_grad_(stage.unfreeze > 0 and backbone.layer_id(name) >= lowest)


def describe_stage(stage: Stage, num_blocks: int) -> str:
    """One line for the log."""
    if stage.unfreeze is None:
        what = "as built"
    elif stage.unfreeze == 0:
        what = "head only (backbone frozen)"
    elif stage.unfreeze > num_blocks:
        what = "whole model"
    else:
        what = f"head + last {stage.unfreeze} of {num_blocks} backbone blocks"
    lr = f"lr {stage.lr:g}" + (f", backbone_lr {stage.backbone_lr:g}" if stage.backbone_lr else "")
    last = stage.first_epoch + stage.epochs - 1
    return f"epochs {stage.first_epoch}-{last}: {what}, {lr}"
