"""Pooling of backbone features into one vector per image."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["GeM", "build_pooling"]


class GeM(nn.Module):
    """Generalized-mean pooling (Radenović, Tolias, Chum, TPAMI 2018).

    p = 1 is average pooling and p -> inf approaches max pooling; a learnable p lets training
    pick the trade-off. Accepts CNN maps (B, C, H, W) and token sequences (B, N, C).
    """

    def __init__(self, p: float = 3.0, learnable: bool = True, eps: float = 1e-6) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)), requires_grad=learnable)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.p.clamp(min=1.0)
        x = x.float().clamp(min=self.eps).pow(p)
        if x.dim() == 4:
            x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        elif x.dim() == 3:
            x = x.mean(dim=1)
        else:
            raise ValueError(f"GeM expects (B,C,H,W) or (B,N,C) features, got shape {tuple(x.shape)}")
        return x.pow(1.0 / p)


class AvgPool(nn.Module):
    """Mean over the spatial positions or tokens."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3)) if x.dim() == 4 else x.mean(dim=1)


def build_pooling(name: str, p: float = 3.0, learnable: bool = True) -> nn.Module:
    """``gem`` or ``avg`` over patch tokens / maps; ``cls`` is handled by the backbone itself."""
    if name == "gem":
        return GeM(p, learnable)
    if name in ("avg", "cls"):
        return AvgPool()
    raise ValueError(f"model.pooling: unknown pooling '{name}' (choose gem, avg or cls)")
