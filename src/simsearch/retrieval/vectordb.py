"""The gallery in a vector database (Qdrant) instead of an index folder: build, add, search.

A collection holds the same rows as an index folder (:mod:`simsearch.retrieval.store`), embedded by
the same code:

- one point per image, id ``uuid5(image id)``, with the named vectors ``emb`` (the checkpoint's
  embedding, cosine) and, for OpenCLIP backbones, ``clip`` (CLIP's own image features, cosine, for
  text search), and the payload ``image_id`` (the folder's id: the POSIX path relative to the
  manifest's ``images_dir``, or an absolute path) and ``path`` (the file);
- one point without vectors, id 0, whose payload ``simsearch_manifest`` is the manifest as JSON:
  checkpoint path and sha256, config, embedding settings, CLIP spec, images_dir, dim, count. It is
  written first with ``complete: false`` and rewritten with ``complete: true`` after the rows, so
  an interrupted build is recognised (and replaced by ``--force``), not searched.

As with a folder, ``add`` embeds only the images whose point is not there yet and refuses a
checkpoint whose sha256 differs from the manifest's, and searches embed the query with the
manifest's settings. Point ids follow from the image ids, so an add that is interrupted and run
again writes the same points, not copies. Unlike a folder's, adds to one collection do not take
turns: two at once both land, but the manifest keeps the last one's ``unreadable`` list (its
``count`` is informative; :attr:`VectorIndex.count` asks the database).

Where a collection lives (``uri``): ``http(s)://host:6333`` is a Qdrant server (the API key, if
any, from ``QDRANT_API_KEY``); ``:memory:`` is Qdrant's local mode in this process only (tests);
anything else is a folder for Qdrant's local mode, which searches exactly (brute force) and keeps
the folder locked while this process has it open. Clients are opened once per ``uri`` and kept
(:func:`close_clients` closes them).
"""
from __future__ import annotations

import json
import logging
import os
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from omegaconf import DictConfig
from tqdm import tqdm

from simsearch.retrieval.store import (
    Hit,
    LoadedIndex,
    QueryModels,
    check_same_checkpoint,
    collect_images,
    embed_folder_for_index,
    embed_new_images,
    embed_query_image,
    embed_text_query,
    load_index_dir,
    require_text_search,
)
from simsearch.retrieval.store import search_index as search_folder_image
from simsearch.retrieval.store import search_text as search_folder_text

__all__ = ["DbLocation", "MissingExtraError", "VectorIndex", "add_to_collection", "build_collection", "connect",
           "close_clients", "index_size", "open_collection", "open_index", "search_index", "search_text"]

log = logging.getLogger("simsearch.vectordb")

FORMAT_VERSION = 1
MANIFEST_ID = 0  # the manifest point; image points have UUIDs
MANIFEST_KEY = "simsearch_manifest"
EMB, CLIP = "emb", "clip"  # the named vectors
BATCH = 256  # points per upsert
_NAMESPACE = uuid.UUID("8f8f3e2c-7a0e-4c1e-9a55-3b1f4f0e6d21")  # for uuid5(image id)
_CLIENTS: dict[str, Any] = {}
EXTRA = "pip install 'simsearch[vectordb]'"


class MissingExtraError(ImportError, ValueError):
    """The ``vectordb`` extra is not installed (a ValueError too, so commands print one line)."""


class DbLocation(NamedTuple):
    """Where a collection lives: ``uri`` (server URL, local folder or ``:memory:``) and its name."""

    uri: str
    collection: str
    backend: str = "qdrant"

    def __str__(self) -> str:
        return f"{self.backend} collection {self.collection!r} at {self.uri}"


def _qdrant() -> tuple[Any, Any]:
    """(QdrantClient, models), or a MissingExtraError naming the extra."""
    try:
        from qdrant_client import QdrantClient, models
    except ImportError as exc:
        raise MissingExtraError(f"--backend qdrant needs qdrant-client: {EXTRA}") from exc
    return QdrantClient, models


def connect(uri: str) -> Any:
    """The Qdrant client for ``uri``, opened on first use (see the module docstring)."""
    client_cls, _ = _qdrant()
    remote = uri.startswith(("http://", "https://"))
    key = uri if remote or uri == ":memory:" else str(Path(uri).resolve())
    if key not in _CLIENTS:
        if remote:
            _CLIENTS[key] = client_cls(url=uri, api_key=os.environ.get("QDRANT_API_KEY") or None)
        elif uri == ":memory:":
            _CLIENTS[key] = client_cls(location=":memory:")
        else:
            if Path(uri).is_file():
                raise NotADirectoryError(f"{uri}: a file; --uri must be a folder (Qdrant local mode) or "
                                         "an http(s) URL")
            _CLIENTS[key] = client_cls(path=key)
        log.info("opened Qdrant at %s", uri)
    return _CLIENTS[key]


def close_clients() -> None:
    """Close every client opened here (a local folder stays locked while its client is open)."""
    while _CLIENTS:
        _, client = _CLIENTS.popitem()
        client.close()


def _point_id(image_id: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, image_id))


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# --------------------------------------------------------------------------- the manifest point


def _read_manifest(client: Any, loc: DbLocation) -> dict[str, Any] | None:
    """The collection's manifest, None for a collection without one, an error for a bad one."""
    points = client.retrieve(loc.collection, [MANIFEST_ID], with_payload=True, with_vectors=False)
    if not points:
        return None
    try:
        manifest = json.loads(points[0].payload[MANIFEST_KEY])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{loc}: point {MANIFEST_ID} is not a simsearch manifest ({exc}); rebuild the "
                         "collection with simsearch index build --force") from None
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{loc}: its manifest is not one this simsearch reads (format_version "
                         f"{manifest.get('format_version') if isinstance(manifest, dict) else None!r}, not "
                         f"{FORMAT_VERSION}); rebuild the collection with this simsearch")
    return manifest


def _write_manifest(client: Any, loc: DbLocation, manifest: dict[str, Any]) -> None:
    _, models = _qdrant()
    point = models.PointStruct(id=MANIFEST_ID, vector={}, payload={MANIFEST_KEY: json.dumps(manifest)})
    client.upsert(loc.collection, [point], wait=True)


def _check_target(client: Any, loc: DbLocation, force: bool) -> None:
    """Refuse to replace a collection without ``force``, and one that simsearch did not write ever."""
    if not client.collection_exists(loc.collection):
        return
    if not force:
        raise FileExistsError(f"{loc} exists; pass --force (force=True) to replace it")
    if _read_manifest(client, loc) is None and client.count(loc.collection, exact=True).count > 0:
        raise FileExistsError(f"refusing to replace {loc}: it holds points but no simsearch manifest "
                              f"(point {MANIFEST_ID}), so simsearch did not write it")


# --------------------------------------------------------------------------- build, add, open


def _upsert(client: Any, loc: DbLocation, ids: list[str], root: Path, emb: np.ndarray,
            clip_emb: np.ndarray | None, desc: str) -> None:
    """Write the rows in batches of BATCH points (waiting for each, so a finished call is searchable)."""
    _, models = _qdrant()
    for start in tqdm(range(0, len(ids), BATCH), desc=desc, unit="batch", leave=False):
        part = ids[start:start + BATCH]
        vectors = {EMB: emb[start:start + BATCH].tolist()}
        if clip_emb is not None:
            vectors[CLIP] = clip_emb[start:start + BATCH].tolist()
        payloads = [{"image_id": i, "path": str(Path(i) if Path(i).is_absolute() else root / i)} for i in part]
        client.upsert(loc.collection, models.Batch(ids=[_point_id(i) for i in part], vectors=vectors,
                                                   payloads=payloads), wait=True)


def build_collection(checkpoint: str | Path, images_dir: str | Path, loc: DbLocation,
                     cfg: DictConfig | None = None, force: bool = False,
                     clip_features: bool | None = None) -> dict[str, Any]:
    """Embed every image under ``images_dir`` into a new collection; returns its manifest.

    The counterpart of :func:`simsearch.retrieval.store.build_index_dir` (same ids, same embeddings,
    same manifest fields), with the collection in place of the folder and no FAISS factory: the
    database does its own indexing (exact in Qdrant's local mode, HNSW on a server).
    """
    _, models = _qdrant()
    client = connect(loc.uri)
    _check_target(client, loc, force)
    e = embed_folder_for_index(checkpoint, images_dir, cfg, clip_features)
    vectors = {EMB: models.VectorParams(size=int(e.emb.shape[1]), distance=models.Distance.COSINE)}
    if e.clip_emb is not None:
        vectors[CLIP] = models.VectorParams(size=int(e.clip_emb.shape[1]), distance=models.Distance.COSINE)
    manifest = {"format_version": FORMAT_VERSION, "backend": loc.backend, "complete": False, **e.manifest(),
                "dim": int(e.emb.shape[1]), "count": len(e.ids)}
    if client.collection_exists(loc.collection):  # _check_target allowed it: force, and ours
        client.delete_collection(loc.collection)
    client.create_collection(loc.collection, vectors_config=vectors)
    _write_manifest(client, loc, manifest)  # complete: false until every row is in
    _upsert(client, loc, e.ids, e.root, e.emb, e.clip_emb, "writing")
    manifest["complete"] = True
    _write_manifest(client, loc, manifest)
    log.info("indexed %d images of %s into %s (dim %d)", len(e.ids), e.root, loc, e.emb.shape[1])
    return manifest


def add_to_collection(loc: DbLocation | VectorIndex, images: str | Path | list[str | Path],
                      checkpoint: str | Path | None = None) -> dict[str, Any]:
    """Embed only the images whose point is not in the collection yet and upsert them; returns the
    new manifest. ``checkpoint`` defaults to the manifest's; one with other weights is refused."""
    index = loc if isinstance(loc, VectorIndex) else open_collection(loc)
    m = index.manifest
    ckpt = Path(checkpoint).resolve() if checkpoint else Path(m["checkpoint"])
    check_same_checkpoint(m, ckpt, index.folder, "add to")
    candidates = collect_images(images, index.images_dir)
    present = index.present([_point_id(i) for i, _ in candidates])
    new = [(i, p) for i, p in candidates if _point_id(i) not in present]
    if not new:
        log.info("nothing to add: every image is already in %s", index.folder)
        return m
    e = embed_new_images(m, ckpt, new)
    _upsert(index.client, index.loc, e.ids, index.images_dir, e.emb, e.clip_emb, "writing")
    added = set(e.ids)
    manifest = {**m, "count": index.count, "updated": _now(),
                "unreadable": sorted({u for u in m.get("unreadable", []) if u not in added} | set(e.unreadable))}
    _write_manifest(index.client, index.loc, manifest)
    index.manifest = manifest
    log.info("added %d images to %s (now %d)", len(e.ids), index.folder, manifest["count"])
    return manifest


@dataclass
class VectorIndex(QueryModels):
    """An open collection; what the app and the searches need of an index, as :class:`LoadedIndex` has it."""

    loc: DbLocation
    client: Any = field(repr=False)
    manifest: dict[str, Any]
    _model: Any = field(default=None, repr=False)
    _clip: Any = field(default=None, repr=False)

    @property
    def folder(self) -> str:
        """Where the index lives, for messages (a LoadedIndex's folder)."""
        return str(self.loc)

    @property
    def count(self) -> int:
        """Images in the collection now (the manifest point left out)."""
        return int(self.client.count(self.loc.collection, exact=True).count) - 1

    def present(self, point_ids: list[str]) -> set[str]:
        """Those of ``point_ids`` that are in the collection (asked BATCH at a time)."""
        found: set[str] = set()
        for start in range(0, len(point_ids), BATCH):
            found |= {str(p.id) for p in self.client.retrieve(self.loc.collection, point_ids[start:start + BATCH],
                                                              with_payload=False, with_vectors=False)}
        return found

    def query(self, vector: np.ndarray, using: str, top_k: int) -> list[Hit]:
        """Top-k hits, best first, for one unit-norm vector searched in the named vector ``using``."""
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        dim = self.manifest["dim"] if using == EMB else self.manifest["clip"]["dim"]
        vector = np.asarray(vector, dtype=np.float32).reshape(-1)
        if vector.shape[0] != dim:
            raise ValueError(f"the query has dimension {vector.shape[0]} but {self} has {dim} ({using})")
        res = self.client.query_points(self.loc.collection, query=vector.tolist(), using=using, limit=top_k,
                                       with_payload=["image_id"], with_vectors=False)
        return [Hit(self.path_of(p.payload["image_id"]), float(p.score)) for p in res.points]


def open_collection(loc: DbLocation) -> VectorIndex:
    """An existing, completely built collection, checked against its manifest."""
    client = connect(loc.uri)
    how = (f"build it with simsearch index build --backend {loc.backend} --uri {loc.uri} "
           f"--collection {loc.collection}")
    if not client.collection_exists(loc.collection):
        raise FileNotFoundError(f"{loc}: no such collection; {how}")
    manifest = _read_manifest(client, loc)
    if manifest is None:
        raise ValueError(f"{loc} is not a simsearch collection (no manifest point {MANIFEST_ID}); {how}")
    if not manifest.get("complete"):
        raise ValueError(f"{loc}: its build did not finish; {how} --force")
    vectors = client.get_collection(loc.collection).config.params.vectors
    want = {EMB: manifest["dim"], **({CLIP: manifest["clip"]["dim"]} if manifest.get("clip") else {})}
    have = {name: int(v.size) for name, v in vectors.items()} if isinstance(vectors, dict) else {}
    if {k: have.get(k) for k in want} != want:
        raise ValueError(f"{loc}: its vectors {have} do not match its manifest {want}; {how} --force")
    log.info("opened %s: %d images of %s", loc, manifest["count"], manifest["images_dir"])
    return VectorIndex(loc, client, manifest)


# --------------------------------------------------------------------------- either kind of index


def open_index(index: str | Path | DbLocation | LoadedIndex | VectorIndex) -> LoadedIndex | VectorIndex:
    """A folder (loaded with :func:`~simsearch.retrieval.store.load_index_dir`) or a collection, opened."""
    if isinstance(index, (LoadedIndex, VectorIndex)):
        return index
    return open_collection(index) if isinstance(index, DbLocation) else load_index_dir(index)


def index_size(index: LoadedIndex | VectorIndex) -> int:
    return index.count if isinstance(index, VectorIndex) else len(index.ids)


def search_index(index: str | Path | DbLocation | LoadedIndex | VectorIndex, query_image_path: str | Path,
                 top_k: int = 10, checkpoint: str | Path | None = None) -> list[Hit]:
    """Embed one query image like the index's images and search a folder or a collection."""
    index = open_index(index)
    if not isinstance(index, VectorIndex):
        return search_folder_image(index, query_image_path, top_k, checkpoint)
    emb = embed_query_image(query_image_path, index.manifest["embedding"],
                            lambda: index.embedding_model(checkpoint))
    return index.query(emb[0], EMB, top_k)


def search_text(index: str | Path | DbLocation | LoadedIndex | VectorIndex, text: str,
                top_k: int = 10) -> list[Hit]:
    """CLIP text search of a folder or a collection (indexes built from an OpenCLIP checkpoint)."""
    index = open_index(index)
    if not isinstance(index, VectorIndex):
        return search_folder_text(index, text, top_k)
    require_text_search(index.manifest, index.folder)
    return index.query(embed_text_query(text, top_k, index.clip_model), CLIP, top_k)

