"""What every backbone offers the rest of the package: features, a data config, LLRD layer ids and a
split at a block boundary. Its own module so that each backbone family (backbones.py, vae.py)
imports it without importing the others."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

__all__ = ["Backbone", "DataConfig"]


@dataclass(frozen=True)
class DataConfig:
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"


class Backbone(nn.Module):
    """Common interface; ``num_layers`` counts LLRD depth units (ViT blocks or CNN stages)."""

    num_features: int
    num_layers: int
    is_vit: bool
    data_config: DataConfig

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_cls(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def layer_id(self, param_name: str) -> int:
        """0 for the stem / embeddings, i + 1 for block or stage i, num_layers + 1 for final norms."""
        raise NotImplementedError

    def forward_lower(self, x: torch.Tensor, top: int) -> torch.Tensor:
        """Everything below the last ``top`` blocks (0: all of ``forward_features``).

        With :meth:`forward_upper` it splits ``forward_features`` at a block boundary, so a
        training stage that unfreezes only the top blocks can cache the frozen part's output.
        """
        self._check_top(top)
        return self.forward_features(x) if top == 0 else self._lower(x, top)

    def forward_upper(self, h: torch.Tensor, top: int) -> torch.Tensor:
        """The last ``top`` blocks and the final norm over :meth:`forward_lower`'s output."""
        self._check_top(top)
        return h if top == 0 else self._upper(h, top)

    def _lower(self, x: torch.Tensor, top: int) -> torch.Tensor:
        """forward_lower for 1 <= top <= num_layers: what a splittable backbone implements."""
        raise NotImplementedError(f"{type(self).__name__} cannot be split at a block boundary; "
                                  "cache features only for head-only stages (train: head)")

    def _upper(self, h: torch.Tensor, top: int) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} cannot be split at a block boundary")

    def _check_top(self, top: int) -> None:
        if not 0 <= top <= self.num_layers:
            raise ValueError(f"top={top}: the backbone has {self.num_layers} blocks")

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        raise NotImplementedError
