"""Gallery embedding cache: .npy + ids keyed by checkpoint hash, file list, mtimes and TTA."""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from simsearch.utils.fs import atomic_file

__all__ = ["cache_key", "load_cached", "save_cached"]

log = logging.getLogger("simsearch.retrieval")


def cache_key(checkpoint_sha: str, paths: list[str], settings: dict[str, Any]) -> str:
    """Any change to the weights, a file (name, size, mtime) or the embedding settings changes it."""
    h = hashlib.sha256(checkpoint_sha.encode())
    h.update(json.dumps(settings, sort_keys=True).encode())
    for p in paths:
        st = os.stat(p)
        h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:32]


def load_cached(cache_dir: str | Path, key: str, names: list[str]) -> tuple[np.ndarray, np.ndarray] | None:
    base = Path(cache_dir) / key
    try:
        meta = json.loads(base.with_suffix(".json").read_text())
        emb = np.load(base.with_suffix(".npy"))
        ok = np.load(base.with_suffix(".ok.npy"))
    except (OSError, ValueError):
        return None
    if meta.get("names") != names or emb.shape[0] != len(names):
        return None
    log.info("gallery embeddings reused from cache %s", base.with_suffix(".npy"))
    return emb, ok


def _atomic_save(path: Path, write) -> None:
    with atomic_file(path, force=True) as tmp, open(tmp, "wb") as f:
        write(f)


def save_cached(cache_dir: str | Path, key: str, names: list[str], emb: np.ndarray, ok: np.ndarray) -> None:
    base = Path(cache_dir) / key
    base.parent.mkdir(parents=True, exist_ok=True)
    _atomic_save(base.with_suffix(".npy"), lambda f: np.save(f, emb))
    _atomic_save(base.with_suffix(".ok.npy"), lambda f: np.save(f, ok))
    # metadata last: a cache entry counts only once its .json exists
    _atomic_save(base.with_suffix(".json"), lambda f: f.write(json.dumps({"names": names}).encode()))
