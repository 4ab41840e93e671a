"""VAE encoder backbone (``vae:PATH_OR_HUB_ID`` or ``vae:tiny``): a baseline without labels in pre-training.

The encoder of a diffusers ``AutoencoderKL`` (Stable Diffusion's VAE, for example) maps an image
in [-1, 1] to a diagonal Gaussian over a (B, 4, H/8, W/8) latent; its mean is the feature map
that GeM / average pooling and the usual head turn into an embedding. The decoder is dropped:
retrieval never reconstructs. diffusers is an optional extra (``pip install -e '.[vae]'``).
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import torch

from simsearch.models.base import Backbone, DataConfig

__all__ = ["TINY", "VaeBackbone", "tiny_vae_config"]

log = logging.getLogger("simsearch.models")
TINY = "tiny"  # vae:tiny = a small random-init AutoencoderKL, for tests and wiring checks
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+(/[\w.-]+)?$")  # owner/name[/subfolder]


def tiny_vae_config() -> dict[str, Any]:
    """Two down blocks of 8 and 16 channels: one 2x downsampling, a 4-channel latent, 64 px input."""
    return dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
                latent_channels=4, norm_num_groups=4, sample_size=64)


def _autoencoder_kl():
    try:
        from diffusers import AutoencoderKL
    except ImportError as exc:
        raise RuntimeError("model.backbone=vae:... needs diffusers: pip install diffusers "
                           "(or pip install -e '.[vae]')") from exc
    return AutoencoderKL


def _locate(source: str) -> tuple[str, str | None]:
    """(folder or hub id, subfolder): a local folder with config.json or vae/config.json, else a hub id."""
    path = Path(source).expanduser()
    if path.is_dir():
        if (path / "config.json").is_file():
            return str(path), None
        if (path / "vae" / "config.json").is_file():  # a whole Stable Diffusion pipeline folder
            return str(path), "vae"
        raise FileNotFoundError(f"model.backbone: vae:{source}: the folder {path} holds no AutoencoderKL "
                                "config.json (nor vae/config.json)")
    if source.startswith((".", "/", "~")) or not _HUB_ID.match(source):
        raise FileNotFoundError(f"model.backbone: vae:{source}: no such folder, and not a hub id "
                                "(owner/name or owner/name/subfolder)")
    owner, name, *sub = source.split("/")
    return f"{owner}/{name}", (sub[0] if sub else None)


def _load_vae(source: str, pretrained: Any):
    AutoencoderKL = _autoencoder_kl()
    if source == TINY:
        if pretrained not in (None, False, "default"):
            raise ValueError(f"model.pretrained: vae:tiny has no weights to load, got {pretrained!r}")
        return AutoencoderKL(**tiny_vae_config())
    if pretrained not in (None, False, True, "default"):
        raise ValueError(f"model.pretrained: for vae:{source} use default (the weights in that folder / "
                         f"hub id) or null (its architecture, random init), got {pretrained!r}")
    where, sub = _locate(source)
    kwargs = {"subfolder": sub} if sub else {}
    try:
        if pretrained in (None, False):  # architecture only: a checkpoint's weights load next
            return AutoencoderKL.from_config(AutoencoderKL.load_config(where, **kwargs))
        return AutoencoderKL.from_pretrained(where, **kwargs)
    except Exception as exc:
        raise RuntimeError(
            f"could not load the AutoencoderKL for 'vae:{source}' from {where}"
            f"{f' (subfolder {sub})' if sub else ''}: {type(exc).__name__}: {exc}. Without internet "
            "access, download the VAE folder (config.json + weights) on another machine and pass "
            "model.backbone=vae:/path/to/folder") from exc


class VaeBackbone(Backbone):
    """The encoder of an ``AutoencoderKL``; features are the latent mean map (B, latent_channels, h, w)."""

    def __init__(self, source: str, pretrained: Any, spec: str) -> None:
        super().__init__()
        vae = _load_vae(source, pretrained)
        vae.decoder = None  # retrieval only encodes; dropping the decoder halves the weights
        vae.post_quant_conv = None
        self.vae = vae
        size = vae.config.sample_size
        size = size[0] if isinstance(size, (tuple, list)) else size
        # The VAE was trained on images scaled to [-1, 1]: (x - 0.5) / 0.5 after ToTensor.
        self.data_config = DataConfig(int(size), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bicubic")
        self.num_features = int(vae.config.latent_channels)
        self.num_down = len(vae.encoder.down_blocks)
        self.num_layers = self.num_down + 1  # the down blocks, then the mid block with the output convs
        self.is_vit = False
        log.info("VAE encoder %s: %d down blocks, %d latent channels, %d px", spec, self.num_down,
                 self.num_features, size)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(x).latent_dist.mean

    def forward_cls(self, x: torch.Tensor) -> torch.Tensor:
        raise ValueError("model.pooling=cls needs a ViT with a class token; a VAE encoder takes gem or avg")

    def layer_id(self, param_name: str) -> int:
        """conv_in 0, down block i -> i + 1, mid block, output norm/conv and quant_conv -> num_layers."""
        name = param_name.removeprefix("vae.")
        if name.startswith("encoder.conv_in."):
            return 0
        if name.startswith("encoder.down_blocks."):
            return int(name.split(".")[2]) + 1
        return self.num_layers

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        if enable:
            self.vae.enable_gradient_checkpointing()
        else:
            self.vae.disable_gradient_checkpointing()
