"""Checkpoints: weights as safetensors, training state loadable with ``weights_only=True``.

Nothing here unpickles arbitrary objects, so a checkpoint from an untrusted source cannot run
code. A checkpoint folder is written beside its final place and renamed in, so a run killed
mid-save keeps the previous one intact.
"""
from __future__ import annotations

import hashlib
import json
import logging
import random
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file, save_file

from simsearch import __version__
from simsearch.utils.errors import InputFileError, reading
from simsearch.utils.fs import atomic_folder

__all__ = ["REBUILD", "checkpoint_hash", "fit_weights", "git_sha", "load_model", "load_train_state",
           "load_weights", "rng_state", "save_checkpoint", "set_rng_state", "train_state_path"]

# What to do about a checkpoint file that cannot be read, for the messages below.
REBUILD = "retrain, or point --checkpoint at another run's best/ or last/ folder"


def git_sha() -> str:
    """The source tree's commit (with '-dirty' when modified), or 'unknown' outside git."""
    root = Path(__file__).resolve().parent  # git finds the checkout from any folder inside it
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (sha + ("-dirty" if dirty else "")) if sha else "unknown"


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch RNG states in tensor/list form (weights_only-safe)."""
    py = random.getstate()
    np_state = np.random.get_state()
    state = {"python": [py[0], list(py[1]), py[2]],
             "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), *n[2:]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _contiguous(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in sd.items()}


def save_checkpoint(folder: str | Path, model: torch.nn.Module, loss: torch.nn.Module,
                    cfg: DictConfig, meta: dict[str, Any], train_state: dict[str, Any] | None = None) -> Path:
    """Write model.safetensors, loss.safetensors, config.yaml, meta.json (+ train_state.pt)."""
    folder = Path(folder)
    meta = {**meta, "git_sha": git_sha(), "simsearch_version": __version__}
    with atomic_folder(folder) as tmp:
        save_file(_contiguous(model.state_dict()), str(tmp / "model.safetensors"))
        loss_sd = _contiguous(loss.state_dict())
        if loss_sd:
            save_file(loss_sd, str(tmp / "loss.safetensors"))
        (tmp / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
        if train_state is not None:
            torch.save(train_state, tmp / "train_state.pt")
    return folder


def train_state_path(folder: str | Path) -> Path:
    """``folder``'s train_state.pt, or FileNotFoundError when there is none to resume from."""
    path = Path(folder) / "train_state.pt"
    if not path.is_file():
        raise FileNotFoundError(f"--resume: no training state at {path}; was the run started with "
                                "this train.output_dir and run_name?")
    return path


def load_train_state(folder: str | Path) -> dict[str, Any]:
    """The training state of ``last/`` (tensors and plain values only: ``weights_only=True``)."""
    path = train_state_path(folder)
    # A refused pickle's own message advises weights_only=False, i.e. running the file's code: never shown.
    with reading(path, "a training state simsearch can load safely (corrupt, truncated, or holding "
                 "objects other than tensors, which are never unpickled)",
                 "start the run again without --resume, or resume from an intact copy of the run",
                 detail=False):
        state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or "epoch" not in state:
        raise InputFileError(path, "not a simsearch training state (no epoch counter)",
                             "start the run again without --resume")
    return state


def load_weights(path: str | Path, fix: str = REBUILD) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; a missing, truncated or corrupt one is an error naming it."""
    with reading(path, "a safetensors file (truncated or corrupt?)", fix):
        return load_file(str(path))


def checkpoint_hash(folder: str | Path) -> str:
    """sha256 of the model weights: names the embeddings a checkpoint produces (cache keys)."""
    h = hashlib.sha256()
    with open(Path(folder) / "model.safetensors", "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_model(folder: str | Path, cfg: DictConfig | None = None, merge: bool = True):
    """Rebuild the model from a checkpoint folder's own config and load its weights strictly.

    A LoRA run's checkpoint holds the base weights and the adapters (so ``--resume`` continues
    it); with ``merge`` (the default, for inference and export) the adapters are folded into the
    weights and the model is a plain backbone again, with the same embeddings.
    """
    from simsearch.models import build_model
    from simsearch.models.lora import merge_lora
    from simsearch.models.model import lora_enabled

    folder = Path(folder)
    weights = folder / "model.safetensors"
    if folder.is_file():
        raise InputFileError(folder, "is a file; --checkpoint takes a run's best/ or last/ folder",
                             f"use {folder.parent}")
    if not weights.is_file():
        raise FileNotFoundError(f"--checkpoint: {weights} not found (expected a run's best/ or last/)")
    if cfg is None:
        with reading(folder / "config.yaml", "the run's config (YAML)",
                     "copy config.yaml back from the run folder, or retrain"):
            cfg = OmegaConf.load(folder / "config.yaml")
        if not isinstance(cfg, DictConfig) or not isinstance(cfg.get("model"), DictConfig):
            raise InputFileError(folder / "config.yaml", "is not a run's config (no model section)",
                                 "copy config.yaml back from the run folder, or retrain")
    build_cfg = OmegaConf.merge(cfg, {"model": {"pretrained": None}})
    model = build_model(build_cfg)
    fit_weights(model, load_weights(weights), weights)
    logging.getLogger("simsearch.models").info("loaded checkpoint weights from %s", weights)
    if merge and lora_enabled(cfg):
        merge_lora(model)
        logging.getLogger("simsearch.models").info("merged the LoRA adapters into the backbone weights")
    return model.eval(), cfg


def fit_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str | Path,
                fix: str = "") -> None:
    """Load ``state`` strictly into ``model``; weights of another shape or set of names are an error
    naming ``source`` and the first keys at fault, not torch's traceback."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))
    if missing or unexpected or shapes:
        parts = [f"{len(shapes)} of another shape, e.g. {shapes[0]} is {tuple(state[shapes[0]].shape)} "
                 f"where the model has {tuple(expected[shapes[0]].shape)}"] if shapes else []
        parts += [f"{len(missing)} missing, e.g. {missing[0]}"] if missing else []
        parts += [f"{len(unexpected)} unexpected, e.g. {unexpected[0]}"] if unexpected else []
        raise InputFileError(source, "holds weights that do not fit the model the config builds ("
                             + "; ".join(parts) + ")",
                             fix or "the config and the weights come from different runs: use the run's "
                             "own config.yaml, or retrain")
    model.load_state_dict(state, strict=True)
