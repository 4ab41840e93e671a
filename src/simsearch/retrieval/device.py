"""Where a model embeds and in which precision: the one place that decides both.

Every embedding path (``simsearch infer`` and ``--ablate``, ``index build/add``, ``search``, the app,
``compare``, the second stage, the quality benchmark) puts its model with :func:`place_model` and
hands ``infer.precision`` to :func:`simsearch.retrieval.embed.embed_dataset`, which resolves it with
:func:`resolve_precision` for the device it embeds on and runs the forward under :func:`autocast`.
Training's Accelerator takes ``train.mixed_precision`` through :func:`resolve_precision` too, so
``accelerate launch --mixed_precision X`` means the same to both:

- the launch flag (``ACCELERATE_MIXED_PRECISION``) wins over ``auto``;
- an explicit config value that disagrees with it is a :class:`~simsearch.config.ConfigError`
  naming both;
- ``auto`` is bf16 on a GPU that supports it, else fp16 on a GPU, and fp32 elsewhere.

The launcher writes ``no`` when it is given no flag as well, so ``no`` in the environment cannot be
told from no flag and counts as none: fp32 under a launcher comes from the config
(``infer.precision=fp32``, ``train.mixed_precision=no``).
"""
from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from simsearch.config import ConfigError, check_choice

__all__ = ["INFER_PRECISIONS", "LAUNCH_VARIABLE", "TRAIN_PRECISIONS", "accelerate_precision", "autocast",
           "auto_precision", "embedding_device", "inference_device", "launch_precision", "place_model",
           "precision_of", "requested_precision", "resolve_precision"]

log = logging.getLogger("simsearch.device")

INFER_PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # infer.precision
TRAIN_PRECISIONS = ("auto", "no", "fp16", "bf16")    # train.mixed_precision, in Accelerate's words
LAUNCH_VARIABLE = "ACCELERATE_MIXED_PRECISION"       # what accelerate launch --mixed_precision sets
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def launch_precision(env: Mapping[str, str] | None = None) -> str | None:
    """bf16 or fp16 when ``accelerate launch --mixed_precision`` asked for it, else None (see the module
    docstring for ``no``); another value (fp8) is refused, naming the variable."""
    raw = (os.environ if env is None else env).get(LAUNCH_VARIABLE, "").strip().lower()
    if raw in ("", "no"):
        return None
    if raw not in _DTYPES:
        raise ConfigError(f"{LAUNCH_VARIABLE}={raw} (accelerate launch --mixed_precision {raw}): simsearch runs "
                          "in bf16, fp16 or fp32 (no); launch with one of those")
    return raw


def auto_precision(device: torch.device | str) -> str:
    """``auto``: bf16 on a CUDA GPU that supports it, fp16 on other CUDA GPUs, fp32 elsewhere."""
    if torch.device(device).type != "cuda":
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def resolve_precision(value: str | None, device: torch.device | str, key: str = "infer.precision",
                      choices: Sequence[str] = INFER_PRECISIONS, env: Mapping[str, str] | None = None) -> str:
    """fp32, bf16 or fp16 for ``value`` (a config's ``key``, one of ``choices``; None = auto) on ``device``.

    The launch flag wins over auto; an explicit value that disagrees with it is a ConfigError naming
    both. ``no`` (Accelerate's word, ``train.mixed_precision``) is fp32.
    """
    value = "auto" if value is None else str(value)
    check_choice(key, value, choices)
    wanted = "fp32" if value == "no" else value
    launched = launch_precision(env)
    if launched is not None:
        if wanted not in ("auto", launched):
            raise ConfigError(f"{key}={value} disagrees with accelerate launch --mixed_precision {launched} "
                              f"({LAUNCH_VARIABLE}={launched}); drop one of them or make them agree")
        return launched
    return auto_precision(device) if wanted == "auto" else wanted


def requested_precision(cfg: DictConfig | None) -> str:
    """``infer.precision`` of a config; ``auto`` for a checkpoint's config written before the key."""
    value = None if cfg is None else OmegaConf.select(cfg, "infer.precision", default=None)
    return "auto" if value is None else str(value)


def accelerate_precision(precision: str) -> str:
    """Accelerate's ``mixed_precision`` for a resolved precision (fp32 is ``no``)."""
    return "no" if precision == "fp32" else precision


def precision_of(accelerator: Any) -> str:
    """The precision an Accelerator runs in (fp32 for ``no`` and for a stand-in without the attribute)."""
    mp = str(getattr(accelerator, "mixed_precision", "no") or "no")
    return mp if mp in _DTYPES else "fp32"


def autocast(precision: str, device_type: str) -> contextlib.AbstractContextManager:
    """``torch.autocast`` in bf16 or fp16 on ``device_type``; fp32 enters nothing (an enclosing autocast,
    such as an Accelerator's, stays in charge)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision not in _DTYPES:
        raise ValueError(f"precision {precision!r}: resolve it first (fp32, bf16 or fp16)")
    return torch.autocast(device_type, dtype=_DTYPES[precision])


def _flag(value: str | None) -> bool:
    return str(value or "").strip().lower() in ("1", "true", "yes", "on")


def inference_device(cpu: bool = False) -> torch.device:
    """Where a model embeds without an Accelerator: the GPU, else Apple's MPS, else the CPU; ``cpu``
    (``train.cpu``) or ``ACCELERATE_USE_CPU`` (``accelerate launch --cpu``) keeps it on the CPU, as
    they keep an Accelerator there."""
    if cpu or _flag(os.environ.get("ACCELERATE_USE_CPU")):
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def embedding_device(model: torch.nn.Module, accelerator: Any = None) -> torch.device:
    """Where ``embed_dataset`` sends the images: the accelerator's device, else the model's."""
    return accelerator.device if accelerator is not None else next(model.parameters()).device


def place_model(model: torch.nn.Module, where: Any = None) -> torch.nn.Module:
    """Move ``model`` (in place) to where ``where`` says: an Accelerator (its ``.device``), a device, or
    None (:func:`inference_device`); returns the model. ``load_model`` returns CPU models: every path
    calls this right after it."""
    if where is None:
        where = inference_device()
    device = torch.device(getattr(where, "device", where))
    model.to(device)
    log.info("model on %s", device)
    return model
