"""Search indexes on disk: embed a catalogue once, then search it by image or by text.

An index folder holds

- ``manifest.json``: checkpoint path and sha256, the config, factory, dim, count, images_dir,
  embedding settings (size, TTA), creation time and simsearch version, and the folder's layout:
  ``shards`` (each shard's row count and file names, in row order), ``index_file`` and
  ``index_rows`` (the rows that file holds);
- one shard per ``index build`` or ``index add``: the rows of the build in ``ids.json``,
  ``embeddings.npy`` and ``clip_image_emb.npy``, those of the k-th add in ``ids-0000k.json``,
  ``embeddings-0000k.npy`` and ``clip_image_emb-0000k.npy``. ids: the image ids, row i = FAISS
  id i; an id is the image's POSIX path relative to the manifest's ``images_dir``, or an absolute
  path for an image added from elsewhere. embeddings: (n, D) float32 unit-norm embeddings from
  the checkpoint's model. CLIP features: (n, C), only for OpenCLIP backbones (see below);
- ``index.faiss`` (after a compaction ``index-0000k.faiss``): the FAISS inner-product index (any
  factory string) over the first ``index_rows`` rows. Rows appended after it was written are
  added to it (FAISS ``index.add``, those rows only) when the folder is loaded.

A build is written beside its final place and renamed in, so a crash never leaves half an index.
``add_to_index`` appends (:func:`append_rows`): it writes the new shard's files, each atomically,
then the manifest, atomically and last, so a crash before the manifest leaves the previous index
(whose manifest names only complete files) and the orphans are removed by the next add. The
bytes an add writes grow with the rows added, not with the index, except that once the rows
appended since the index file was written exceed COMPACT_FRACTION of its rows, the whole FAISS
index is written to a new file (so loads never add more than that; over many adds the index
files written total at most 1 / (1 - 1 / (1 + COMPACT_FRACTION)) = 5 times the final index).
Adds to one folder take turns (a lock on its ``.lock`` file). Folders of format version 1 (one
shard under the names above, no layout in the manifest) still load, and an add turns them into
version 2 without rewriting their files. Embeddings from different weights are not comparable,
so adding or searching with a checkpoint whose sha256 differs is refused.

Why a second matrix for text search: a trained checkpoint's embedding lives in our head's
space, which CLIP's text tower has never seen (and the fine-tuned vision tower has drifted from
CLIP's joint space). Text queries therefore go through the *original* CLIP model named by the
config's backbone (``open_clip:NAME[:TAG]`` with its pretrained weights): its text features are
compared with its own image features (the visual tower's output including CLIP's projection),
which the index computes at build time and stores as ``clip_image_emb.npy``.
"""
from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

import faiss
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from simsearch import __version__
from simsearch.data import ImageDataset, build_transforms, is_image_file, list_image_files
from simsearch.models.checkpoint import checkpoint_hash, load_model
from simsearch.retrieval.device import embedding_device, inference_device, place_model, requested_precision
from simsearch.retrieval.embed import check_embedding_config, embed_dataset
from simsearch.retrieval.index import as_float32_matrix, build_index, check_factory, resolve_factory, search
from simsearch.utils.errors import InputFileError, reading
from simsearch.utils.fs import atomic_file, atomic_folder, check_writable, write_json_atomic

__all__ = ["COMPACT_FRACTION", "Hit", "LoadedIndex", "QueryModels", "add_to_index", "append_rows",
           "build_index_dir", "clip_spec",
           "list_images", "load_clip", "load_index_dir", "require_text_search", "search_index", "search_text",
           "search_vectors", "write_index_dir",
           # shared with the vector-database store (retrieval.vectordb)
           "FolderEmbeddings", "NewImages", "check_same_checkpoint", "collect_images", "embed_folder_for_index",
           "embed_new_images",
           "embed_query_image", "embed_text_query"]

log = logging.getLogger("simsearch.index")

FORMAT_VERSION = 2  # 2: the manifest lists shards and the index file; 1: one shard, fixed names
READ_VERSIONS = (1, 2)
EMB_FILE, IDS_FILE, INDEX_FILE = "embeddings.npy", "ids.json", "index.faiss"
CLIP_FILE, MANIFEST_FILE, LOCK_FILE = "clip_image_emb.npy", "manifest.json", ".lock"
#: Rows appended since the index file was written, as a share of its rows, beyond which an add
#: writes the whole FAISS index to a new file (see the module docstring).
COMPACT_FRACTION = 0.25
# What to do about an index folder whose files cannot be read, for the messages below.
REBUILD = "rebuild the index: simsearch index build --checkpoint RUN/best --images DIR --out INDEX_DIR --force"
WHAT = {"manifest": "the index manifest (JSON)", "ids": "the index's image ids (JSON list)",
        "embeddings": "the index's embeddings (.npy)", "clip_image_emb": "the index's CLIP image features (.npy)",
        "index": "a FAISS index file"}
# The folder's own files (shards, index files, their atomic writers' temporary files), for clean-up.
PART_RE = re.compile(r"^\.?(ids|embeddings|clip_image_emb|index|manifest)(-\d{5})?\.(json|npy|faiss)(\..+\.tmp)?$")


class Hit(NamedTuple):
    """One search result: the image's full path and its cosine similarity to the query."""

    path: str
    score: float


class QueryModels:
    """What a FAISS folder (:class:`LoadedIndex`) and a vector-database collection share: image paths
    and the query models, loaded once on demand. Needs ``manifest``, ``folder``, ``_model``, ``_clip``."""

    @property
    def images_dir(self) -> Path:
        return Path(self.manifest["images_dir"])

    def path_of(self, image_id: str) -> str:
        """The file behind an id (relative ids resolve against ``images_dir``)."""
        p = Path(image_id)
        return str(p if p.is_absolute() else self.images_dir / p)

    def embedding_model(self, checkpoint: str | Path | None = None) -> torch.nn.Module:
        """The checkpoint's model, after checking it is the one that built the index."""
        if self._model is None:
            ckpt = Path(checkpoint) if checkpoint else Path(self.manifest["checkpoint"])
            _check_same_checkpoint(self.manifest, ckpt, self.folder, "search")
            self._model, _ = load_model(ckpt)
            place_model(self._model, inference_device())
            log.info("loaded the model of %s from %s", self.folder, ckpt)
        return self._model

    def clip_model(self) -> tuple[torch.nn.Module, Any]:
        """(CLIP model, tokenizer) named by the manifest; raises for non-CLIP indexes."""
        if self._clip is None:
            clip, tokenizer = load_clip(require_text_search(self.manifest, self.folder))
            self._clip = place_model(clip, inference_device()), tokenizer
        return self._clip


@dataclass
class LoadedIndex(QueryModels):
    """An index folder in memory; the models it needs for queries are loaded once, on demand."""

    folder: Path
    manifest: dict[str, Any]
    ids: list[str]
    index: faiss.Index
    emb_shards: list[np.ndarray] = field(repr=False)
    clip_shards: list[np.ndarray] | None = field(default=None, repr=False)
    _model: Any = field(default=None, repr=False)
    _clip: Any = field(default=None, repr=False)

    @property
    def emb(self) -> np.ndarray:
        """(N, D) embeddings of every row (read-only); the shards are joined on first use, not on load."""
        if len(self.emb_shards) > 1:
            self.emb_shards = [np.concatenate(self.emb_shards)]
        return self.emb_shards[0]

    @property
    def clip_emb(self) -> np.ndarray | None:
        """(N, C) CLIP image features of every row, or None for an index without them."""
        if self.clip_shards is None:
            return None
        if len(self.clip_shards) > 1:
            self.clip_shards = [np.concatenate(self.clip_shards)]
        return self.clip_shards[0]


# --------------------------------------------------------------------------- images


def list_images(folder: str | Path) -> list[str]:
    """Sorted POSIX paths, relative to ``folder``, of every image under it (hidden ones skipped)."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: the image folder does not exist or is not a folder")
    return list_image_files(root)  # the names query and gallery folders give, too


def _image_id(path: Path, images_dir: Path) -> str:
    path = path.resolve()
    try:
        return path.relative_to(images_dir).as_posix()
    except ValueError:  # outside the catalogue folder: keep the absolute path
        return path.as_posix()


def _collect(images: str | Path | Sequence[str | Path], images_dir: Path) -> list[tuple[str, Path]]:
    """(id, path) for each image file given or found under each folder given, without repeats."""
    items = [images] if isinstance(images, (str, os.PathLike)) else list(images)
    if not items:
        raise ValueError("no images given to add")
    out: dict[str, Path] = {}
    for item in items:
        p = Path(item)
        if p.is_dir():
            files = [p / rel for rel in list_images(p)]
        elif p.is_file():
            if not is_image_file(p):
                raise ValueError(f"{p}: not an image file (by its extension)")
            files = [p]
        else:
            raise FileNotFoundError(f"{p}: no such image file or folder")
        for f in files:
            out.setdefault(_image_id(f, images_dir), f)
    return list(out.items())


# --------------------------------------------------------------------------- embedding


def _embedding_settings(cfg: DictConfig, model: torch.nn.Module) -> dict[str, Any]:
    """What decides an embedding besides the weights; stored so queries are embedded alike."""
    dc = model.data_config
    return {"image_size": int(cfg.data.image_size or dc.input_size), "mean": list(dc.mean),
            "std": list(dc.std), "resize_ratio": float(cfg.data.eval_resize_ratio),
            "tta_flip": bool(cfg.infer.tta_flip), "tta_scales": [float(s) for s in cfg.infer.tta_scales],
            "batch_size": int(cfg.infer.batch_size), "num_workers": int(cfg.data.num_workers),
            "precision": requested_precision(cfg)}


def _embed_files(model: torch.nn.Module, files: Sequence[Path], s: dict[str, Any], desc: str,
                 tta: bool = True) -> tuple[np.ndarray, np.ndarray]:
    transform = build_transforms(s["image_size"], s["mean"], s["std"], train=False,
                                 resize_ratio=s["resize_ratio"])
    ds = ImageDataset([(str(f), -1) for f in files], transform)
    # an index built before infer.precision existed embeds its queries in auto, as the key's default does
    return embed_dataset(model, ds, None, batch_size=s["batch_size"], num_workers=s["num_workers"],
                         tta_flip=s["tta_flip"] and tta, scales=tuple(s["tta_scales"]) if tta else (1.0,),
                         desc=desc, precision=s.get("precision", "auto"))


def clip_spec(cfg: DictConfig | dict) -> dict[str, Any] | None:
    """{"model": NAME, "pretrained": weights or None} for an OpenCLIP backbone, else None."""
    from simsearch.models.backbones import parse_backbone_name, resolve_pretrained

    model_cfg = cfg["model"]
    kind, name, tag = parse_backbone_name(model_cfg["backbone"])
    if kind != "open_clip":
        return None
    weights = resolve_pretrained(kind, tag, model_cfg["pretrained"])
    if weights is not None and Path(str(weights)).is_file():
        weights = str(Path(str(weights)).resolve())
    return {"model": name, "pretrained": weights}


def load_clip(spec: dict[str, Any]) -> tuple[torch.nn.Module, Any]:
    """The whole CLIP model (both towers) and its tokenizer, in eval mode.

    Without pretrained weights the model is random; it is seeded so that the index and later
    queries see the same random model (only useful for tests).
    """
    import open_clip

    from simsearch.models.backbones import register_open_clip_configs

    register_open_clip_configs()
    if spec["pretrained"] is None:
        log.warning("CLIP model %s has no pretrained weights: text search results are meaningless",
                    spec["model"])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = open_clip.create_model(spec["model"], pretrained=None)
    else:
        model = open_clip.create_model(spec["model"], pretrained=spec["pretrained"], require_pretrained=True)
    log.info("loaded CLIP %s (weights: %s) for text search", spec["model"], spec["pretrained"] or "random")
    return model.eval(), open_clip.get_tokenizer(spec["model"])


class _ClipImageTower(torch.nn.Module):
    """CLIP's image encoder with its projection, shaped like our embedding models for embed_dataset."""

    def __init__(self, clip: torch.nn.Module) -> None:
        super().__init__()
        self.clip = clip
        self.embed_dim = int(clip.visual.output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_image(x, normalize=True)


def _clip_image_features(spec: dict[str, Any], files: Sequence[Path], batch_size: int, desc: str,
                         device: torch.device | None = None,
                         precision: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """CLIP image features (joint image-text space) with CLIP's own eval preprocessing, on ``device``
    (None: ``retrieval.device.inference_device``) in ``precision``."""
    clip, _ = load_clip(spec)
    cfg = getattr(clip.visual, "preprocess_cfg", {}) or {}
    size = clip.visual.image_size
    settings = {"image_size": int(size[0] if isinstance(size, (tuple, list)) else size),
                "mean": list(cfg.get("mean", (0.48145466, 0.4578275, 0.40821073))),
                "std": list(cfg.get("std", (0.26862954, 0.26130258, 0.27577711))),
                "resize_ratio": 1.0, "tta_flip": False, "tta_scales": [1.0], "batch_size": batch_size,
                "num_workers": 0, "precision": precision}
    return _embed_files(place_model(_ClipImageTower(clip), device), files, settings, desc, tta=False)


def _embed_all(model: torch.nn.Module, files: Sequence[Path], settings: dict[str, Any],
               spec: dict[str, Any] | None, desc: str) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """(embeddings, CLIP features or None, readable mask) for ``files``."""
    emb, ok = _embed_files(model, files, settings, desc)
    clip_emb = None
    if spec is not None:
        clip_emb, clip_ok = _clip_image_features(spec, files, settings["batch_size"], f"{desc} (CLIP)",
                                                 embedding_device(model), settings.get("precision", "auto"))
        ok = ok & clip_ok
    for f in np.asarray([str(f) for f in files])[~ok]:
        log.warning("unreadable image %s: left out of the index", f)
    return emb, clip_emb, ok


# --------------------------------------------------------------------------- folder I/O


def _check_target(out: Path, force: bool) -> None:
    """Refuse to overwrite an index without ``force``, and anything that is not an index ever."""
    if out.is_file():
        raise FileExistsError(f"{out} is a file; the index output must be a folder")
    check_writable(out, folder=True, what="the index folder")
    if not out.exists():
        return
    if not force:
        raise FileExistsError(f"{out} exists; pass --force (force=True) to replace the index")
    if any(out.iterdir()) and not (out / MANIFEST_FILE).is_file():
        raise FileExistsError(f"refusing to replace {out}: it is not an index folder (no {MANIFEST_FILE})")


def _shard_files(k: int, clip: bool) -> dict[str, Any]:
    """File names of shard ``k``: the build's (k = 0) keep the names of format version 1."""
    tag = "" if k == 0 else f"-{k:05d}"
    return {"ids": f"ids{tag}.json", "embeddings": f"embeddings{tag}.npy",
            "clip": f"clip_image_emb{tag}.npy" if clip else None}


def _layout(manifest: dict[str, Any]) -> tuple[list[dict[str, Any]], str, int]:
    """(shards, index file, rows in it) of a checked manifest; a version 1 folder is one shard."""
    if manifest["format_version"] == 1:
        shard = {**_shard_files(0, bool(manifest.get("clip"))), "rows": manifest["count"]}
        return [shard], INDEX_FILE, manifest["count"]
    return manifest["shards"], manifest["index_file"], manifest["index_rows"]


def _write_ids(path: Path, ids: Sequence[str]) -> None:
    path.write_text(json.dumps(list(ids), ensure_ascii=False, indent=0) + "\n", encoding="utf-8")


def _write_array(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:  # a file object: np.save would add .npy to a temporary name
        np.save(f, array)


def write_index_dir(out: str | Path, manifest: dict[str, Any], ids: list[str], emb: np.ndarray,
                    index: faiss.Index, clip_emb: np.ndarray | None = None) -> dict[str, Any]:
    """Write a whole index folder from rows already embedded (``index`` holds all of them): every
    file into a temporary sibling folder, then swapped in. Returns ``manifest`` with the format
    version, count, dim and layout (one shard) filled in."""
    manifest = {**manifest, "format_version": FORMAT_VERSION, "count": len(ids), "dim": int(emb.shape[1]),
                "shards": [{**_shard_files(0, clip_emb is not None), "rows": len(ids)}],
                "index_file": INDEX_FILE, "index_rows": len(ids)}
    with atomic_folder(out) as tmp:
        _write_array(tmp / EMB_FILE, emb)
        if clip_emb is not None:
            _write_array(tmp / CLIP_FILE, clip_emb)
        _write_ids(tmp / IDS_FILE, ids)
        faiss.write_index(index, str(tmp / INDEX_FILE))
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n",
                                         encoding="utf-8")
    return manifest


def _check_rows(m: dict[str, Any], ids: Sequence[str], emb: np.ndarray, clip_emb: np.ndarray | None,
                present: Sequence[str]) -> np.ndarray:
    emb = as_float32_matrix(emb, "new embeddings")
    if emb.shape != (len(ids), m["dim"]):
        raise ValueError(f"{len(ids)} new ids need ({len(ids)}, {m['dim']}) embeddings, got {emb.shape}")
    if (clip_emb is None) != (not m.get("clip")) or (
            clip_emb is not None and clip_emb.shape != (len(ids), m["clip"]["dim"])):
        raise ValueError("the new rows' CLIP features must match the index's (shape (n, clip dim), or none "
                         f"for an index without them), got {None if clip_emb is None else clip_emb.shape}")
    if len(set(ids)) != len(ids) or not set(ids).isdisjoint(present):
        raise ValueError("the new ids repeat each other or ids already in the index")
    return emb


def append_rows(loaded: LoadedIndex, ids: Sequence[str], emb: np.ndarray, clip_emb: np.ndarray | None = None,
                unreadable: Sequence[str] = (), compact: bool | None = None) -> dict[str, Any]:
    """Append rows to a loaded index folder; returns the new manifest and updates ``loaded``.

    FAISS ``index.add`` of the new vectors only; on disk a new shard (ids, embeddings, CLIP
    features), each file written atomically, then the manifest, atomically and last. ``compact``
    (None: when the rows appended since the index file was written exceed COMPACT_FRACTION of
    it) also writes the whole FAISS index, to a new file. ``unreadable``: new ids that could not
    be embedded (listed in the manifest until they are added). The caller holds the folder's
    lock (:func:`add_to_index` does); on an error the folder is as before, ``loaded`` is stale.
    """
    m, folder = loaded.manifest, loaded.folder
    emb = _check_rows(m, ids, emb, clip_emb, loaded.ids)
    shards, index_file, index_rows = _layout(m)
    count = len(loaded.ids) + len(ids)
    if ids:
        files = _shard_files(len(shards), clip_emb is not None)
        for name, write, data in ((files["embeddings"], _write_array, emb),
                                  (files["clip"], _write_array, clip_emb), (files["ids"], _write_ids, ids)):
            if name is not None:
                with atomic_file(folder / name, force=True) as tmp:  # force: an orphan of a crashed add
                    write(tmp, data)
        shards = [*shards, {**files, "rows": len(ids)}]
        loaded.index.add(emb)
        if compact if compact is not None else count - index_rows > COMPACT_FRACTION * index_rows:
            index_file, index_rows = f"index-{len(shards) - 1:05d}.faiss", count
            with atomic_file(folder / index_file, force=True) as tmp:
                faiss.write_index(loaded.index, str(tmp))
    added = set(ids)
    manifest = {**m, "format_version": FORMAT_VERSION, "count": count, "updated": _now(),
                "unreadable": sorted({u for u in m.get("unreadable", []) if u not in added} | set(unreadable)),
                "shards": shards, "index_file": index_file, "index_rows": index_rows}
    write_json_atomic(folder / MANIFEST_FILE, manifest, force=True)  # the folder changes here
    loaded.manifest = manifest
    loaded.ids.extend(ids)
    if ids:
        loaded.emb_shards.append(emb)
        if loaded.clip_shards is not None:
            loaded.clip_shards.append(np.asarray(clip_emb, dtype=np.float32))
    _remove_unreferenced(folder, manifest)
    return manifest


def _remove_unreferenced(folder: Path, manifest: dict[str, Any]) -> None:
    """Delete the folder's own files that the manifest does not name: an index file replaced by
    a compaction, and what a crashed add left behind. Never fails the add that calls it."""
    shards, index_file, _ = _layout(manifest)
    used = {MANIFEST_FILE, index_file} | {s[k] for s in shards for k in ("ids", "embeddings", "clip") if s.get(k)}
    for path in folder.iterdir():
        if path.name not in used and PART_RE.match(path.name) and path.is_file():
            try:
                path.unlink()
            except OSError as exc:
                log.warning("could not remove %s, which %s no longer names: %s", path, MANIFEST_FILE, exc)


@contextmanager
def _one_writer(folder: Path) -> Iterator[None]:
    """Adds to one folder take turns: an exclusive advisory lock on FOLDER/.lock (POSIX only)."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock; two adds at once may lose one of them
        yield
        return
    with open(folder / LOCK_FILE, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _check_same_checkpoint(manifest: dict[str, Any], checkpoint: Path, folder: Path, action: str) -> str:
    sha = checkpoint_hash(checkpoint) if (checkpoint / "model.safetensors").is_file() else None
    if sha is None:
        raise FileNotFoundError(f"checkpoint {checkpoint} has no model.safetensors (the index {folder} "
                                f"was built with {manifest['checkpoint']}); pass --checkpoint")
    if sha != manifest["checkpoint_sha256"]:
        raise ValueError(
            f"refusing to {action} the index {folder} with checkpoint {checkpoint} (sha256 {sha}): the index "
            f"was built with {manifest['checkpoint']} (sha256 {manifest['checkpoint_sha256']}), and "
            "embeddings from different weights are not comparable; build a new index instead")
    return sha


# --------------------------------------------------------------------------- build, add, load


@dataclass
class FolderEmbeddings:
    """Every readable image under a folder, embedded for a new index: what a FAISS folder
    (:func:`build_index_dir`) and a vector-database collection are both built from."""

    root: Path
    ids: list[str]  # the readable images, relative to ``root``
    emb: np.ndarray
    clip_emb: np.ndarray | None
    unreadable: list[str]
    checkpoint: Path
    cfg: DictConfig
    settings: dict[str, Any]
    clip: dict[str, Any] | None  # the CLIP spec and feature dim, or None

    def manifest(self) -> dict[str, Any]:
        """The manifest fields both kinds of index record."""
        return {"simsearch_version": __version__, "created": _now(), "checkpoint": str(self.checkpoint),
                "checkpoint_sha256": checkpoint_hash(self.checkpoint),
                "config": OmegaConf.to_container(self.cfg, resolve=True), "images_dir": str(self.root),
                "embedding": self.settings, "clip": self.clip, "unreadable": self.unreadable}


def embed_folder_for_index(checkpoint: str | Path, images_dir: str | Path, cfg: DictConfig | None = None,
                           clip_features: bool | None = None,
                           check_model: Callable[[torch.nn.Module], None] | None = None) -> FolderEmbeddings:
    """Embed every image under ``images_dir`` with the checkpoint's model, placed by the device rule.

    ``cfg`` (default: the checkpoint's own config) gives the embedding settings (size, TTA, batch).
    ``clip_features`` (default: on for OpenCLIP backbones) adds CLIP image features for text search.
    ``check_model`` runs on the loaded model before anything is embedded (to refuse an index
    setting that does not fit it).
    """
    if cfg is not None:
        check_embedding_config(cfg)
    root = Path(images_dir).resolve()
    names = list_images(root)
    if not names:
        raise ValueError(f"no images under {root}")
    checkpoint = Path(checkpoint).resolve()
    model, ckpt_cfg = load_model(checkpoint)
    if check_model is not None:
        check_model(model)
    cfg = cfg if cfg is not None else ckpt_cfg
    place_model(model, inference_device(bool(OmegaConf.select(cfg, "train.cpu", default=False))))
    spec = clip_spec(cfg) if clip_features is not False else None
    if clip_features and spec is None:
        raise ValueError(f"CLIP image features need an open_clip backbone, not {cfg.model.backbone}")
    settings = _embedding_settings(cfg, model)
    emb, clip_emb, ok = _embed_all(model, [root / n for n in names], settings, spec, "index")
    keep = np.flatnonzero(ok)
    if keep.size == 0:
        raise ValueError(f"no readable image under {root}")
    clip_kept = None if clip_emb is None else clip_emb[keep]
    return FolderEmbeddings(root, [names[i] for i in keep], emb[keep], clip_kept,
                            [names[i] for i in np.flatnonzero(~ok)], checkpoint, cfg, settings,
                            None if spec is None else {**spec, "dim": int(clip_emb.shape[1])})


def build_index_dir(checkpoint: str | Path, images_dir: str | Path, out_dir: str | Path,
                    factory: str = "Flat", cfg: DictConfig | None = None, force: bool = False,
                    clip_features: bool | None = None) -> dict[str, Any]:
    """Embed every image under ``images_dir`` and write an index folder; returns its manifest.

    ``cfg`` (default: the checkpoint's own config) gives the embedding settings (size, TTA,
    batch) and FAISS search knobs. ``clip_features`` (default: on for OpenCLIP backbones) adds
    ``clip_image_emb.npy`` for text search.
    """
    out = Path(out_dir)
    _check_target(out, force)
    def fits(model: torch.nn.Module) -> None:
        check_factory(factory, model.embed_dim, key="--factory (infer.index)")

    e = embed_folder_for_index(checkpoint, images_dir, cfg, clip_features, fits)
    factory = resolve_factory(factory, len(e.ids))  # the manifest records what was built
    index = build_index(e.emb, factory, ef_search=e.cfg.infer.ef_search, nprobe=e.cfg.infer.nprobe,
                        seed=e.cfg.seed)
    manifest = write_index_dir(out, {**e.manifest(), "factory": factory}, e.ids, e.emb, index, e.clip_emb)
    log.info("indexed %d images of %s into %s (%s, dim %d)", len(e.ids), e.root, out, factory, e.emb.shape[1])
    return manifest


def add_to_index(index_dir: str | Path, images: str | Path | Sequence[str | Path],
                 checkpoint: str | Path | None = None) -> dict[str, Any]:
    """Embed only the images not yet in the index and append them; returns the new manifest.

    ``images``: files and/or folders (searched recursively). Existing rows are kept as they are
    (never re-embedded, never rewritten: :func:`append_rows`). ``checkpoint`` defaults to the
    manifest's; one with other weights is refused. New images are embedded with the settings
    stored in the manifest.
    """
    folder = _require_index_folder(index_dir)
    check_writable(folder, folder=True, what="the index folder")
    with _one_writer(folder):
        return _add_locked(load_index_dir(folder), images, checkpoint)


def _add_locked(loaded: LoadedIndex, images: str | Path | Sequence[str | Path],
                checkpoint: str | Path | None) -> dict[str, Any]:
    m = loaded.manifest
    ckpt = Path(checkpoint).resolve() if checkpoint else Path(m["checkpoint"])
    _check_same_checkpoint(m, ckpt, loaded.folder, "add to")
    present = set(loaded.ids)
    new = [(i, p) for i, p in _collect(images, loaded.images_dir) if i not in present]
    if not new:
        log.info("nothing to add: every image is already in %s", loaded.folder)
        return m
    e = embed_new_images(m, ckpt, new)
    manifest = append_rows(loaded, e.ids, e.emb, e.clip_emb, unreadable=e.unreadable)
    log.info("added %d images to %s (now %d)", len(e.ids), loaded.folder, manifest["count"])
    return manifest


@dataclass
class NewImages:
    """Images embedded for an add: the readable ones' ids and embeddings, the unreadable ids."""

    ids: list[str]
    emb: np.ndarray
    clip_emb: np.ndarray | None
    unreadable: list[str]


def embed_new_images(manifest: dict[str, Any], checkpoint: Path, new: Sequence[tuple[str, Path]]) -> NewImages:
    """Embed ``new`` (id, file) pairs as the index's own rows were (the manifest's ``embedding`` and
    ``clip`` settings), with the checkpoint's model placed by the device rule: what adding to a FAISS
    folder and to a collection share."""
    model, _ = load_model(checkpoint)
    place_model(model, inference_device())
    emb, clip_emb, ok = _embed_all(model, [p for _, p in new], manifest["embedding"], manifest["clip"], "adding")
    keep = np.flatnonzero(ok)
    return NewImages([new[i][0] for i in keep], emb[keep], None if clip_emb is None else clip_emb[keep],
                     [new[i][0] for i in np.flatnonzero(~ok)])


def _read_part(folder: Path, name: str, read: Callable[[Path], Any]) -> Any:
    """One file of an index folder; a missing, truncated or corrupt one is an error naming it."""
    path = folder / name
    with reading(path, WHAT[re.split(r"[-.]", name, maxsplit=1)[0]], REBUILD):
        return read(path)


def _plain_name(name: Any) -> bool:
    return isinstance(name, str) and PART_RE.match(name) is not None and not name.startswith(".")


def _layout_fields(mpath: Path, m: dict[str, Any]) -> None:
    """A version 2 manifest's shards and index file: plain file names, row counts that add up."""
    shards = m.get("shards")
    ok = isinstance(shards, list) and len(shards) > 0 and all(
        isinstance(s, dict) and type(s.get("rows")) is int and s["rows"] >= 0
        and _plain_name(s.get("ids")) and _plain_name(s.get("embeddings"))
        and (_plain_name(s.get("clip")) if m.get("clip") else s.get("clip") is None) for s in shards)
    if not ok or not _plain_name(m.get("index_file")) or type(m.get("index_rows")) is not int:
        raise InputFileError(mpath, "does not list the index's shards and index file (shards, index_file, "
                             "index_rows)", REBUILD)
    rows = sum(s["rows"] for s in shards)
    if rows != m["count"] or not 0 < m["index_rows"] <= rows:
        raise InputFileError(mpath, f"is inconsistent: its shards hold {rows} rows, its count is {m['count']} and "
                             f"its index file {m['index_rows']}", REBUILD)


def _manifest_fields(mpath: Path, manifest: Any) -> None:
    if not isinstance(manifest, dict):
        raise InputFileError(mpath, f"is not the index manifest (a JSON {type(manifest).__name__}, not an "
                             "object)", REBUILD)
    missing = [k for k in ("format_version", "count", "checkpoint", "checkpoint_sha256", "images_dir",
                           "factory", "embedding") if k not in manifest]
    if missing:
        raise InputFileError(mpath, f"is not a complete index manifest (no {', '.join(missing)})", REBUILD)
    if manifest["format_version"] not in READ_VERSIONS:
        raise InputFileError(mpath, f"format_version {manifest['format_version']!r} is not one this simsearch "
                             f"reads ({', '.join(map(str, READ_VERSIONS))})",
                             "rebuild the index with this simsearch")
    if manifest["format_version"] >= 2:
        _layout_fields(mpath, manifest)


def _require_index_folder(index_dir: str | Path) -> Path:
    folder = Path(index_dir)
    if not (folder / MANIFEST_FILE).is_file():
        raise FileNotFoundError(f"{folder} is not an index folder (no {MANIFEST_FILE}); "
                                "build one with simsearch index build")
    return folder


def _read_array(folder: Path, name: str, rows: int, dim: int, what: str) -> np.ndarray:
    """A shard's matrix, memory-mapped: searches need only the FAISS index, so its pages are read
    when first used (the files are never changed in place, only replaced, so the map stays valid)."""
    array = _read_part(folder, name, lambda p: np.load(p, allow_pickle=False, mmap_mode="r"))
    if array.shape != (rows, dim):
        raise InputFileError(folder / name, f"holds an array of shape {array.shape}, not ({rows}, {dim}) like the "
                             f"manifest's shard and {what}", REBUILD)
    return array


def load_index_dir(index_dir: str | Path) -> LoadedIndex:
    """Read an index folder, check that its files agree with each other, and add to the FAISS
    index the rows appended since its file was written."""
    folder = _require_index_folder(index_dir)
    manifest = _read_part(folder, MANIFEST_FILE, lambda p: json.loads(p.read_text(encoding="utf-8")))
    _manifest_fields(folder / MANIFEST_FILE, manifest)
    shards, index_file, index_rows = _layout(manifest)
    index = _read_part(folder, index_file, lambda p: faiss.read_index(str(p)))
    if index.ntotal != index_rows:
        raise InputFileError(folder / index_file, f"holds {index.ntotal} vectors, but {MANIFEST_FILE} says "
                             f"{index_rows}: an inconsistent index folder", REBUILD)
    clip = manifest.get("clip")
    ids: list[str] = []
    emb_shards: list[np.ndarray] = []
    clip_shards: list[np.ndarray] | None = [] if clip else None
    for shard in shards:
        part = _read_part(folder, shard["ids"], lambda p: json.loads(p.read_text(encoding="utf-8")))
        if not isinstance(part, list) or not all(isinstance(i, str) for i in part):
            raise InputFileError(folder / shard["ids"], "is not a JSON list of image ids", REBUILD)
        if len(part) != shard["rows"]:
            raise InputFileError(folder / shard["ids"], f"holds {len(part)} ids, but {MANIFEST_FILE} says "
                                 f"{shard['rows']}: an inconsistent index folder", REBUILD)
        emb = _read_array(folder, shard["embeddings"], shard["rows"], index.d, index_file)
        if len(ids) + len(part) > index_rows:  # appended after the index file was written
            index.add(np.ascontiguousarray(emb[max(0, index_rows - len(ids)):], dtype=np.float32))
        ids += part
        emb_shards.append(emb)
        if clip_shards is not None:
            clip_shards.append(_read_array(folder, shard["clip"], shard["rows"], int(clip["dim"]), "the CLIP dim"))
    log.info("loaded index %s: %d images of %s (%s, %d shard(s), %d rows added to %s)", folder, len(ids),
             manifest["images_dir"], manifest["factory"], len(shards), len(ids) - index_rows, index_file)
    return LoadedIndex(folder, manifest, ids, index, emb_shards, clip_shards)


# --------------------------------------------------------------------------- search


def _loaded(index: str | Path | LoadedIndex) -> LoadedIndex:
    return index if isinstance(index, LoadedIndex) else load_index_dir(index)


def search_vectors(index: str | Path | LoadedIndex, queries: np.ndarray, top_k: int = 10) -> list[list[Hit]]:
    """Top-k hits, best first, for each row of ``queries`` (already embedded, unit norm)."""
    loaded = _loaded(index)
    scores, rows = search(loaded.index, queries, top_k)
    return [[Hit(loaded.path_of(loaded.ids[j]), float(s)) for j, s in zip(r, sc) if j >= 0]
            for r, sc in zip(rows, scores)]


def search_index(index: str | Path | LoadedIndex, query_image_path: str | Path, top_k: int = 10,
                 checkpoint: str | Path | None = None) -> list[Hit]:
    """Embed one query image like the index's images (same model, size and TTA) and search."""
    loaded = _loaded(index)
    emb = embed_query_image(query_image_path, loaded.manifest["embedding"],
                            lambda: loaded.embedding_model(checkpoint))
    return search_vectors(loaded, emb, top_k)[0]


def require_text_search(manifest: dict[str, Any], folder: str | Path | None = None) -> dict[str, Any]:
    """The manifest's CLIP spec, or a ValueError saying why this index (``folder``) cannot search by text."""
    where = f"{folder}: " if folder is not None else ""
    backbone = str(manifest.get("config", {}).get("model", {}).get("backbone", "unknown"))
    if not backbone.startswith("open_clip:"):
        raise ValueError(f"{where}text search needs a CLIP model (open_clip:NAME[:TAG] backbone), but this "
                         f"index was built with {backbone}, which has no text tower; build the index from a "
                         "checkpoint with an OpenCLIP backbone")
    if not manifest.get("clip"):
        raise ValueError(f"{where}this index was built without CLIP image features (clip_features=False / "
                         "--no-clip-features); rebuild it with them for text search")
    return manifest["clip"]


def search_text(index: str | Path | LoadedIndex, text: str, top_k: int = 10) -> list[Hit]:
    """Rank the index's images by CLIP similarity between ``text`` and their CLIP image features."""
    loaded = _loaded(index)
    require_text_search(loaded.manifest, loaded.folder)
    t = embed_text_query(text, top_k, loaded.clip_model)
    scores = loaded.clip_emb @ t
    order = np.argsort(-scores, kind="stable")[:top_k]
    return [Hit(loaded.path_of(loaded.ids[i]), float(scores[i])) for i in order]


# --------------------------------------------------------------------------- shared with other stores
# retrieval.vectordb keeps the same rows in a vector database: it collects, embeds and checks
# exactly as index folders do, through these.


def collect_images(images: str | Path | Sequence[str | Path], images_dir: Path) -> list[tuple[str, Path]]:
    """(id, path) for each image file given or found under each folder given, ids as index folders make them."""
    return _collect(images, images_dir)


def check_same_checkpoint(manifest: dict[str, Any], checkpoint: Path, where: str | Path, action: str) -> str:
    """The checkpoint's sha256, after refusing one other than the manifest's (``action`` the index ``where``)."""
    return _check_same_checkpoint(manifest, checkpoint, where, action)


def embed_query_image(query_image_path: str | Path, settings: dict[str, Any],
                      model: Callable[[], torch.nn.Module]) -> np.ndarray:
    """(1, D) embedding of one query image made like the index's images (``settings``: the manifest's
    ``embedding``); ``model`` is called once the file is checked (a folder, a missing file or an
    unreadable image is an error naming it)."""
    query = Path(query_image_path)
    if query.is_dir():
        raise InputFileError(query, "is a folder; the query must be one image file")
    if not query.is_file():
        raise FileNotFoundError(f"{query}: the query image does not exist")
    emb, ok = _embed_files(model(), [query], settings, "query")
    if not ok[0]:
        raise InputFileError(query, "cannot be read as an image (not an image, truncated or corrupt)")
    return emb


def embed_text_query(text: str, top_k: int, clip_model: Callable[[], tuple[torch.nn.Module, Any]]) -> np.ndarray:
    """(C,) unit-norm CLIP text feature of ``text``; ``clip_model`` (model, tokenizer) is called once the
    query and ``top_k`` are checked."""
    if not text or not text.strip():
        raise ValueError("the text query is empty")
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    clip, tokenizer = clip_model()
    tokens = tokenizer([text]).to(next(clip.parameters()).device)  # where the model was placed
    with torch.no_grad():
        return clip.encode_text(tokens, normalize=True).float().cpu().numpy()[0]
