"""Backbone factory: ``open_clip:NAME[:TAG]``, ``timm:NAME`` and ``vae:PATH_OR_HUB_ID`` (models/vae.py).

Each backbone returns spatial features (CNN maps (B,C,H,W) or ViT patch tokens (B,N,C), the CLS
token dropped) or, for ``cls`` pooling, one vector per image. It also carries its own data config
(input size, mean, std), as timm models do, so no constants are hard-coded elsewhere, and a
``layer_id`` per parameter for layer-wise LR decay.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from simsearch.models import lite0_weights
from simsearch.models.base import Backbone, DataConfig

__all__ = ["Backbone", "DataConfig", "create_backbone", "parse_backbone_name", "register_open_clip_configs",
           "resolve_pretrained"]

log = logging.getLogger("simsearch.models")
_CONFIG_DIR = Path(__file__).with_name("open_clip_configs")


def register_open_clip_configs() -> None:
    """Make the model configs shipped in ``open_clip_configs/`` (tiny test towers) known to open_clip."""
    import open_clip

    open_clip.add_model_config(_CONFIG_DIR)


def parse_backbone_name(spec: str) -> tuple[str, str, str | None]:
    """``open_clip:ViT-L-14:openai`` -> ('open_clip', 'ViT-L-14', 'openai')."""
    parts = spec.split(":")
    if len(parts) < 2 or parts[0] not in ("open_clip", "timm", "vae") or not parts[1]:
        raise ValueError(
            f"model.backbone: '{spec}' must be open_clip:NAME[:TAG], timm:NAME or vae:PATH_OR_HUB_ID "
            "(for example open_clip:ViT-L-14:openai, timm:tf_efficientnet_lite0 or vae:tiny)")
    if parts[0] == "vae":  # a path may hold ':' itself
        return "vae", ":".join(parts[1:]), None
    if parts[0] == "timm" and len(parts) > 2:
        raise ValueError(f"model.backbone: '{spec}': timm names take no tag; use model.pretrained")
    return parts[0], parts[1], (":".join(parts[2:]) or None)


def _weights_error(spec: str, tried: str, exc: Exception) -> RuntimeError:
    return RuntimeError(
        f"could not load pretrained weights for '{spec}' (tried {tried}): "
        f"{type(exc).__name__}: {exc}. Without internet access, download the weights file on "
        "another machine and pass it as model.pretrained=/path/to/weights "
        "(.bin, .pt, .pth or .safetensors), or model.pretrained=null for random initialisation.")


class OpenClipBackbone(Backbone):
    """The vision tower of an OpenCLIP model; GeM runs over its last block's patch tokens."""

    def __init__(self, name: str, pretrained: str | None, spec: str) -> None:
        super().__init__()
        import open_clip

        register_open_clip_configs()
        if name not in open_clip.list_models():
            close = [m for m in open_clip.list_models() if name.lower()[:5] in m.lower()][:8]
            raise ValueError(f"model.backbone: unknown OpenCLIP model '{name}' "
                             f"(similar: {', '.join(close) or 'none'}; see open_clip.list_models())")
        try:
            model = open_clip.create_model(name, pretrained=pretrained, require_pretrained=bool(pretrained))
        except Exception as exc:
            if pretrained is None:
                raise
            raise _weights_error(spec, f"OpenCLIP pretrained='{pretrained}'", exc) from exc
        self.visual = model.visual
        # CLIP's own projection is unused (our head projects); drop it so DDP sees no unused params.
        self.visual.proj = None
        if not hasattr(self.visual, "transformer"):
            raise ValueError(f"model.backbone: '{spec}' has a non-ViT vision tower; use timm:NAME "
                             "for CNN backbones")
        cfg = getattr(self.visual, "preprocess_cfg", {}) or {}
        size = self.visual.image_size
        size = size[0] if isinstance(size, (tuple, list)) else size
        self.data_config = DataConfig(int(size), tuple(cfg.get("mean", open_clip.OPENAI_DATASET_MEAN)),
                                      tuple(cfg.get("std", open_clip.OPENAI_DATASET_STD)),
                                      cfg.get("interpolation", "bicubic"))
        self.num_features = self.visual.transformer.width
        self.num_layers = len(self.visual.transformer.resblocks)
        self.is_vit = True

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        out = self.visual.forward_intermediates(x, indices=1, normalize_intermediates=True,
                                                intermediates_only=True, output_fmt="NLC")
        return out["image_intermediates"][-1]

    def forward_cls(self, x: torch.Tensor) -> torch.Tensor:
        # The CLS token after ln_post, before CLIP's projection (the head projects it).
        x = self.visual._embeds(x)
        x = self.visual.transformer(x)
        return self.visual.ln_post(x[:, 0])

    def _lower(self, x: torch.Tensor, top: int) -> torch.Tensor:
        """Tokens (B, 1 + N, C), CLS first, after the first L - ``top`` residual blocks."""
        x = self.visual._embeds(x)
        for block in self.visual.transformer.resblocks[: self.num_layers - top]:
            x = block(x)
        return x

    def _upper(self, h: torch.Tensor, top: int) -> torch.Tensor:
        """The last ``top`` blocks, ln_post, and the patch tokens (CLS dropped), as forward_features."""
        for block in self.visual.transformer.resblocks[self.num_layers - top:]:
            h = block(h)
        return self.visual.ln_post(h)[:, 1:]

    def layer_id(self, param_name: str) -> int:
        name = param_name.removeprefix("visual.")
        if name.startswith("transformer.resblocks."):
            return int(name.split(".")[2]) + 1
        if name.startswith(("conv1", "class_embedding", "positional_embedding", "ln_pre", "patch")):
            return 0
        return self.num_layers + 1

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.visual.set_grad_checkpointing(enable)


class TimmBackbone(Backbone):
    """Any timm model, created headless (num_classes=0, global_pool='')."""

    def __init__(self, name: str, pretrained: Any, spec: str) -> None:
        super().__init__()
        import timm

        if not timm.is_model(name):
            close = timm.list_models(f"*{name[:6]}*")[:8]
            raise ValueError(f"model.backbone: unknown timm model '{name}' "
                             f"(similar: {', '.join(close) or 'none'}; see timm.list_models())")
        kwargs: dict[str, Any] = dict(num_classes=0, global_pool="")
        if pretrained == lite0_weights.PACKAGE:
            self.model = timm.create_model(name, pretrained=False, **kwargs)
            self._load_lite0(name)
        elif pretrained is None:
            self.model = timm.create_model(name, pretrained=False, **kwargs)
        else:
            if pretrained is True:
                tried = "timm's default weights from the Hugging Face hub"
            else:
                kwargs["pretrained_cfg_overlay"] = dict(file=str(pretrained))
                tried = f"the local file {pretrained}"
            try:
                self.model = timm.create_model(name, pretrained=True, **kwargs)
            except Exception as exc:
                raise _weights_error(spec, tried, exc) from exc
        dc = timm.data.resolve_model_data_config(self.model)
        self.data_config = DataConfig(int(dc["input_size"][-1]), tuple(dc["mean"]), tuple(dc["std"]),
                                      dc.get("interpolation", "bicubic"))
        self.num_features = self.model.num_features
        self.is_vit = hasattr(self.model, "blocks") and hasattr(self.model, "num_prefix_tokens")
        self._groups = self._layer_groups()
        self.num_layers = max(self._groups.values())
        self._split_kind = self._splittable()  # the module structure is fixed: decide once, not per step

    def _load_lite0(self, name: str) -> None:
        if name != "tf_efficientnet_lite0":
            raise ValueError(f"model.pretrained={lite0_weights.PACKAGE} fits timm:tf_efficientnet_lite0, "
                             f"not timm:{name}")
        path = lite0_weights.lite0_weights_path()
        state = lite0_weights.map_lukemelas_to_timm(torch.load(path, map_location="cpu", weights_only=True))
        state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
        self.model.load_state_dict(state, strict=True)
        log.info("loaded EfficientNet-Lite0 ImageNet weights from %s", path)

    def _layer_groups(self) -> dict[str, int]:
        """Stage-level (CNN) or block-level (ViT) groups from timm's own group_matcher."""
        from timm.models._manipulate import group_parameters

        names = [n for n, _ in self.model.named_parameters()]
        if not hasattr(self.model, "group_matcher"):
            return {n: 1 for n in names}
        groups = group_parameters(self.model, self.model.group_matcher(coarse=True))
        ordered = sorted(groups)
        out = {}
        for rank, gid in enumerate(ordered):
            for n in groups[gid]:
                out[n] = rank  # stem 0, stages/blocks 1..L (timm puts the final norm in L)
        return out

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.model.forward_features(x)
        if feats.dim() == 3:  # ViT tokens: drop class/register tokens, keep patches
            feats = feats[:, getattr(self.model, "num_prefix_tokens", 0):]
        return feats

    def forward_cls(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.model.forward_features(x)
        if feats.dim() != 3 or getattr(self.model, "num_prefix_tokens", 0) == 0:
            raise ValueError("model.pooling=cls needs a ViT with a class token; use gem or avg")
        return feats[:, 0]

    def _splittable(self) -> str:
        """'cnn' for EfficientNet-style models (conv_stem, bn1, blocks = the LLRD stages, conv_head,
        bn2), 'vit' for timm ViTs (patch_embed, blocks, norm); '' when the split is unknown."""
        m = self.model
        blocks = getattr(m, "blocks", None)
        if blocks is None or len(blocks) != self.num_layers:
            return ""
        if all(hasattr(m, a) for a in ("conv_stem", "bn1", "conv_head", "bn2")):
            return "cnn"
        if self.is_vit and all(hasattr(m, a) for a in ("patch_embed", "_pos_embed", "norm")):
            return "vit"
        return ""

    def _lower(self, x: torch.Tensor, top: int) -> torch.Tensor:
        if not self._split_kind:
            return super()._lower(x, top)
        m = self.model
        if self._split_kind == "cnn":
            x = m.bn1(m.conv_stem(x))
        else:
            x = m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(x))))
        for block in m.blocks[: self.num_layers - top]:
            x = block(x)
        return x

    def _upper(self, h: torch.Tensor, top: int) -> torch.Tensor:
        if not self._split_kind:
            return super()._upper(h, top)
        m = self.model
        for block in m.blocks[self.num_layers - top:]:
            h = block(h)
        if self._split_kind == "cnn":
            return m.bn2(m.conv_head(h))
        return m.norm(h)[:, getattr(m, "num_prefix_tokens", 0):]

    def layer_id(self, param_name: str) -> int:
        return self._groups.get(param_name.removeprefix("model."), self.num_layers + 1)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.model.set_grad_checkpointing(enable)


def resolve_pretrained(kind: str, tag: str | None, pretrained: Any) -> Any:
    """What ``model.pretrained`` means for a backbone kind: None, True (timm default), a tag or a file."""
    if pretrained is None or pretrained is False:
        return None
    if pretrained == "default" or pretrained is True:
        if kind == "open_clip":
            return tag  # no tag in the name: random initialisation, as open_clip itself does
        return True
    p = str(pretrained)
    if os.sep in p or p.endswith((".pt", ".pth", ".bin", ".safetensors")):
        if not Path(p).is_file():
            raise FileNotFoundError(f"model.pretrained: weights file not found: {p}")
    return p


def create_backbone(spec: str, pretrained: Any = "default") -> Backbone:
    """Build the backbone a config names; ``pretrained=None`` gives random init (tests)."""
    kind, name, tag = parse_backbone_name(spec)
    if kind == "vae":  # weights come from the VAE's own folder / hub id (model.pretrained: default or null)
        from simsearch.models.vae import VaeBackbone

        return VaeBackbone(name, pretrained, spec)
    weights = resolve_pretrained(kind, tag, pretrained)
    log.info("backbone %s, weights: %s", spec, weights or "none (random init, or a checkpoint loads them next)")
    if kind == "open_clip":
        return OpenClipBackbone(name, weights, spec)
    return TimmBackbone(name, weights, spec)
