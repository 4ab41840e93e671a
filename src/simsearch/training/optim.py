"""AdamW with layer-wise LR decay (LLRD) and a linear warm-up + cosine schedule."""
from __future__ import annotations

import math
from typing import Callable, Iterable

import torch
import torch.nn as nn
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["param_groups_llrd", "build_optimizer", "warmup_cosine_factor", "build_scheduler"]


def _no_decay(name: str, param: torch.Tensor) -> bool:
    # Norm scales, biases, GeM's p and embeddings-like vectors are 1-D: decaying them hurts.
    return param.ndim <= 1 or name.endswith(".bias") or name.endswith("pool.p")


def param_groups_llrd(named_params: Iterable[tuple[str, nn.Parameter]], layer_id: Callable[[str], int],
                      num_layers: int, base_lr: float, decay: float, weight_decay: float,
                      fixed_lr: Callable[[str], float | None] | None = None) -> list[dict]:
    """One group per (depth, decay flag): layer i gets base * decay^(num_layers + 1 - i).

    Layer 0 is the stem/patch embedding (lowest LR), blocks/stages 1..L, and L + 1 (final
    norm, pooling, head, loss parameters) the base LR; this is the BEiT/ELECTRA convention.
    Frozen parameters (``requires_grad=False``) get no group. ``fixed_lr(name)``, when it
    returns a number, gives that parameter this LR instead of the decayed one (a training
    stage's ``backbone_lr``).
    """
    groups: dict[tuple[int, bool, float], dict] = {}
    for name, p in named_params:
        if not p.requires_grad:
            continue
        lid = min(layer_id(name), num_layers + 1)
        nd = _no_decay(name, p)
        fixed = fixed_lr(name) if fixed_lr is not None else None
        key = (lid, nd, -1.0 if fixed is None else float(fixed))
        if key not in groups:
            scale = decay ** (num_layers + 1 - lid) if fixed is None else fixed / (base_lr or 1.0)
            groups[key] = dict(params=[], names=[], lr=base_lr * scale if fixed is None else fixed,
                               lr_scale=scale, weight_decay=0.0 if nd else weight_decay, layer_id=lid)
        groups[key]["params"].append(p)
        groups[key]["names"].append(name)
    return [groups[k] for k in sorted(groups)]


def build_optimizer(model: nn.Module, loss: nn.Module, base_lr: float, decay: float,
                    weight_decay: float, backbone_lr: float | None = None) -> torch.optim.AdamW:
    """AdamW over the trainable model parameters (LLRD) and the loss's own (ArcFace centres, base LR).

    ``backbone_lr`` (a training stage's) replaces LLRD: every trainable backbone parameter gets it.
    """
    num_layers = model.backbone.num_layers
    named = list(model.named_parameters()) + [(f"loss.{n}", p) for n, p in loss.named_parameters()]

    def layer_of(name: str) -> int:
        return num_layers + 1 if name.startswith("loss.") else model.layer_id(name)

    def fixed_lr(name: str) -> float | None:
        return backbone_lr if name.startswith("backbone.") else None

    groups = param_groups_llrd(named, layer_of, num_layers, base_lr, decay, weight_decay,
                               fixed_lr if backbone_lr is not None else None)
    if not groups:
        raise ValueError("nothing to train: every model and loss parameter is frozen")
    for g in groups:
        g.pop("names")
    return torch.optim.AdamW(groups, lr=base_lr, weight_decay=weight_decay)


def warmup_cosine_factor(step: int, total_steps: int, warmup_steps: int, min_factor: float) -> float:
    """Multiplier of each group's LR: linear 0 -> 1 over warm-up, cosine 1 -> min_factor after."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if total_steps <= warmup_steps:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_frac: float,
                    base_lr: float, min_lr: float) -> LambdaLR:
    warmup = int(round(warmup_frac * total_steps))
    min_factor = min_lr / base_lr if base_lr > 0 else 0.0
    return LambdaLR(optimizer, lambda s: warmup_cosine_factor(s, total_steps, warmup, min_factor))
