"""Leakage guard: a query whose bytes also appear in the gallery or the training data.

Names are no evidence (files get renamed), so the check hashes content.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from pathlib import Path

__all__ = ["file_sha256", "find_leaks"]


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def find_leaks(queries: Iterable[str | Path], others: Mapping[str, Iterable[str | Path]]) -> list[str]:
    """One message per query file whose content hash is also in one of ``others`` (name -> files)."""
    q_hash = {str(p): file_sha256(p) for p in queries}
    wanted = set(q_hash.values())
    messages = []
    for where, paths in others.items():
        seen: dict[str, str] = {}
        for p in paths:
            h = file_sha256(p)
            if h in wanted:
                seen.setdefault(h, str(p))
        for q, h in sorted(q_hash.items()):
            if h in seen:
                messages.append(f"query {q} has the same content as {where} file {seen[h]}")
    return messages
