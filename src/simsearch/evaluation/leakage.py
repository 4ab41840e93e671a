"""Leakage guard: a query whose bytes also appear in the gallery or the training data.

Names are no evidence (files get renamed), so the check hashes content. Reading every gallery
and training file on every run costs a full pass over the data, so :class:`HashCache` keeps each
file's sha256 between runs, keyed by its absolute path, size, mtime_ns, ctime_ns and inode (ctime:
an edit that restores the mtime, e.g. ``cp -p`` or ``touch -r`` over the file, still changes it; the
inode: a path that now is, or links to, another file); a second run hashes only the files that
changed. ``simsearch infer`` keeps the cache in ``infer.cache_dir``
and skips the guard altogether with ``infer.leakage_check=false``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from tqdm import tqdm

from simsearch.utils.fs import write_text_atomic

__all__ = ["HASH_CACHE_FILE", "HashCache", "file_sha256", "find_leaks"]

log = logging.getLogger("simsearch.leakage")

#: The cache's file name inside ``infer.cache_dir`` (beside the gallery embedding cache).
HASH_CACHE_FILE = "leakage-sha256.json"
CACHE_VERSION = 1
#: A file modified less than this long before it is hashed is not cached: a second write within
#: the file system's timestamp granularity would keep its mtime (git's "racily clean" problem).
RACY_NS = 2_000_000_000


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _valid_entry(entry: Any) -> bool:
    return (isinstance(entry, list) and len(entry) == 5 and all(type(v) is int for v in entry[:4])
            and isinstance(entry[4], str) and len(entry[4]) == 64)


class HashCache:
    """sha256 of files by (absolute path, size, mtime_ns, ctime_ns, inode), kept in the JSON file
    ``path``.

    ``path`` None: no cache, every file is read (what the guard did before the cache). A missing
    cache file starts empty; an unreadable or corrupt one is ignored with a warning and rewritten
    by :meth:`save`, never an error. ``hashed`` and ``reused`` count this run's files.
    """

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self.entries: dict[str, list] = {}  # absolute path -> [size, mtime_ns, ctime_ns, inode, sha256]
        self.hashed = self.reused = 0
        self._seen: set[str] = set()
        self._dirty = False
        if self.path is not None:
            self._load()

    @classmethod
    def in_dir(cls, cache_dir: str | Path | None) -> HashCache:
        """The cache file of a cache folder (``infer.cache_dir``); None: in memory only."""
        return cls(Path(cache_dir) / HASH_CACHE_FILE if cache_dir else None)

    def _load(self) -> None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:  # ValueError: bad JSON or bad UTF-8
            return self._corrupt(f"cannot be read ({exc})")
        files = data.get("files") if isinstance(data, dict) and data.get("version") == CACHE_VERSION else None
        if not isinstance(files, dict) or not all(_valid_entry(e) for e in files.values()):
            return self._corrupt(f"is not a version {CACHE_VERSION} hash cache")
        self.entries = files
        log.info("leakage guard: %d cached file hashes from %s", len(files), self.path)

    def _corrupt(self, why: str) -> None:
        log.warning("leakage hash cache %s %s; ignoring it, every file is hashed again and the cache "
                    "rewritten", self.path, why)
        self._dirty = True

    def sha256(self, path: str | Path) -> str:
        """The file's content hash: from the cache when its size, times and inode are unchanged, else read."""
        if self.path is None:
            self.hashed += 1
            return file_sha256(path)
        key = os.path.abspath(path)  # not realpath: its lstat of each folder on the way costs more than the stat
        st = os.stat(key)  # before reading: a write during the read leaves a stale stamp, not a stale hash
        stamp = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
        self._seen.add(key)
        entry = self.entries.get(key)
        if entry is not None and entry[:4] == stamp:
            self.reused += 1
            return entry[4]
        digest = file_sha256(key)
        self.hashed += 1
        if time.time_ns() - st.st_mtime_ns >= RACY_NS:
            self.entries[key] = [*stamp, digest]
            self._dirty = True
        else:
            self.entries.pop(key, None)
        return digest

    def save(self) -> None:
        """Write the cache atomically when it changed; entries of deleted files are dropped.

        A cache that cannot be written costs the next run its speed, not this run: a warning.
        """
        if self.path is None or not self._dirty:
            return
        keep = {p: e for p, e in self.entries.items() if p in self._seen or os.path.exists(p)}
        try:
            write_text_atomic(self.path, json.dumps({"version": CACHE_VERSION, "files": keep},
                                                    separators=(",", ":")) + "\n", force=True)
        except OSError as exc:
            log.warning("leakage hash cache %s not written (%s): the next run hashes every file again",
                        self.path, exc)
            return
        self._dirty = False
        log.info("leakage guard: %d hashes cached in %s", len(keep), self.path)


def find_leaks(queries: Iterable[str | Path], others: Mapping[str, Iterable[str | Path]],
               same_file_ok: bool = False, cache: HashCache | None = None) -> list[str]:
    """One message per query file whose content hash is also in one of ``others`` (name -> files).

    ``same_file_ok``: the query's own file in ``others`` is no leak (a test CSV row that is both a
    query and a gallery item, left out of its own ranking); another file with its content still is.
    ``cache``: hashes of earlier runs (saved back when done); None hashes every file.
    """
    cache = cache if cache is not None else HashCache()
    q_hash = {str(p): cache.sha256(p) for p in queries}
    wanted = set(q_hash.values())
    messages = []
    for where, paths in others.items():
        seen: dict[str, list[str]] = {}
        for p in tqdm(paths, desc=f"leakage check: {where} files", disable=None, leave=False,
                      dynamic_ncols=True, mininterval=1.0):  # disable=None: no bar off a terminal
            h = cache.sha256(p)
            if h in wanted:
                seen.setdefault(h, []).append(str(p))
        for q, h in sorted(q_hash.items()):
            own = os.path.realpath(q) if same_file_ok else None
            same = [p for p in seen.get(h, []) if os.path.realpath(p) != own]
            if same:
                messages.append(f"query {q} has the same content as {where} file {same[0]}")
    cache.save()
    log.info("leakage guard: %d files hashed, %d hashes reused%s", cache.hashed, cache.reused,
             f" from {cache.path}" if cache.path else "")
    return messages
