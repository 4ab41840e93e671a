"""Search indexes on disk: embed a catalogue once, then search it by image or by text.

An index folder holds

- ``embeddings.npy``: (N, D) float32 unit-norm embeddings from the checkpoint's model;
- ``ids.json``: the N image ids, row i = FAISS id i. An id is the image's POSIX path relative
  to the manifest's ``images_dir``, or an absolute path for an image added from elsewhere;
- ``index.faiss``: the FAISS inner-product index (any factory string) over those rows;
- ``clip_image_emb.npy``: (N, C) CLIP image features, only for OpenCLIP backbones (see below);
- ``manifest.json``: checkpoint path and sha256, the config, factory, dim, count, images_dir,
  embedding settings (size, TTA), creation time and simsearch version.

Folders are built beside their final place and renamed in, so a crash never leaves half an
index; ``add_to_index`` does the same with a copy. Embeddings from different weights are not
comparable, so adding or searching with a checkpoint whose sha256 differs is refused.

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

import faiss
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from simsearch import __version__
from simsearch.data import ImageDataset, build_transforms, is_image_file
from simsearch.models.checkpoint import checkpoint_hash, load_model
from simsearch.retrieval.embed import check_embedding_config, embed_dataset
from simsearch.retrieval.index import as_float32_matrix, build_index, check_factory, resolve_factory, search
from simsearch.utils.errors import InputFileError, reading
from simsearch.utils.fs import atomic_folder, check_writable

__all__ = ["Hit", "LoadedIndex", "add_to_index", "build_index_dir", "clip_spec", "list_images",
           "load_clip", "load_index_dir", "require_text_search", "search_index", "search_text",
           "search_vectors"]

log = logging.getLogger("simsearch.index")

FORMAT_VERSION = 1
EMB_FILE, IDS_FILE, INDEX_FILE = "embeddings.npy", "ids.json", "index.faiss"
CLIP_FILE, MANIFEST_FILE = "clip_image_emb.npy", "manifest.json"
# What to do about an index folder whose files cannot be read, for the messages below.
REBUILD = "rebuild the index: simsearch index build --checkpoint RUN/best --images DIR --out INDEX_DIR --force"
WHAT = {MANIFEST_FILE: "the index manifest (JSON)", IDS_FILE: "the index's image ids (JSON list)",
        EMB_FILE: "the index's embeddings (.npy)", CLIP_FILE: "the index's CLIP image features (.npy)",
        INDEX_FILE: "a FAISS index file"}


class Hit(NamedTuple):
    """One search result: the image's full path and its cosine similarity to the query."""

    path: str
    score: float


@dataclass
class LoadedIndex:
    """An index folder in memory; the models it needs for queries are loaded once, on demand."""

    folder: Path
    manifest: dict[str, Any]
    ids: list[str]
    emb: np.ndarray
    index: faiss.Index
    clip_emb: np.ndarray | None = None
    _model: Any = field(default=None, repr=False)
    _clip: Any = field(default=None, repr=False)

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
            log.info("loaded the model of %s from %s", self.folder, ckpt)
        return self._model

    def clip_model(self) -> tuple[torch.nn.Module, Any]:
        """(CLIP model, tokenizer) named by the manifest; raises for non-CLIP indexes."""
        if self._clip is None:
            self._clip = load_clip(require_text_search(self.manifest, self.folder))
        return self._clip


# --------------------------------------------------------------------------- images


def list_images(folder: str | Path) -> list[str]:
    """Sorted POSIX paths, relative to ``folder``, of every image under it (hidden ones skipped)."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: the image folder does not exist or is not a folder")
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                  if p.is_file() and is_image_file(p)
                  and not any(part.startswith(".") for part in p.relative_to(root).parts))


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
            "batch_size": int(cfg.infer.batch_size), "num_workers": int(cfg.data.num_workers)}


def _embed_files(model: torch.nn.Module, files: Sequence[Path], s: dict[str, Any], desc: str,
                 tta: bool = True) -> tuple[np.ndarray, np.ndarray]:
    transform = build_transforms(s["image_size"], s["mean"], s["std"], train=False,
                                 resize_ratio=s["resize_ratio"])
    ds = ImageDataset([(str(f), -1) for f in files], transform)
    return embed_dataset(model, ds, None, batch_size=s["batch_size"], num_workers=s["num_workers"],
                         tta_flip=s["tta_flip"] and tta, scales=tuple(s["tta_scales"]) if tta else (1.0,),
                         desc=desc)


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


def _clip_image_features(spec: dict[str, Any], files: Sequence[Path], batch_size: int,
                         desc: str) -> tuple[np.ndarray, np.ndarray]:
    """CLIP image features (joint image-text space) with CLIP's own eval preprocessing."""
    clip, _ = load_clip(spec)
    cfg = getattr(clip.visual, "preprocess_cfg", {}) or {}
    size = clip.visual.image_size
    settings = {"image_size": int(size[0] if isinstance(size, (tuple, list)) else size),
                "mean": list(cfg.get("mean", (0.48145466, 0.4578275, 0.40821073))),
                "std": list(cfg.get("std", (0.26862954, 0.26130258, 0.27577711))),
                "resize_ratio": 1.0, "tta_flip": False, "tta_scales": [1.0], "batch_size": batch_size,
                "num_workers": 0}
    return _embed_files(_ClipImageTower(clip), files, settings, desc, tta=False)


def _embed_all(model: torch.nn.Module, files: Sequence[Path], settings: dict[str, Any],
               spec: dict[str, Any] | None, desc: str) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """(embeddings, CLIP features or None, readable mask) for ``files``."""
    emb, ok = _embed_files(model, files, settings, desc)
    clip_emb = None
    if spec is not None:
        clip_emb, clip_ok = _clip_image_features(spec, files, settings["batch_size"], f"{desc} (CLIP)")
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


def _write_index_dir(out: Path, manifest: dict[str, Any], ids: list[str], emb: np.ndarray,
                     index: faiss.Index, clip_emb: np.ndarray | None) -> None:
    """Write every file into a temporary sibling folder, then swap it in."""
    with atomic_folder(out) as tmp:
        np.save(tmp / EMB_FILE, emb)
        if clip_emb is not None:
            np.save(tmp / CLIP_FILE, clip_emb)
        (tmp / IDS_FILE).write_text(json.dumps(ids, ensure_ascii=False, indent=0) + "\n", encoding="utf-8")
        faiss.write_index(index, str(tmp / INDEX_FILE))
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n",
                                         encoding="utf-8")


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


def build_index_dir(checkpoint: str | Path, images_dir: str | Path, out_dir: str | Path,
                    factory: str = "Flat", cfg: DictConfig | None = None, force: bool = False,
                    clip_features: bool | None = None) -> dict[str, Any]:
    """Embed every image under ``images_dir`` and write an index folder; returns its manifest.

    ``cfg`` (default: the checkpoint's own config) gives the embedding settings (size, TTA,
    batch) and FAISS search knobs. ``clip_features`` (default: on for OpenCLIP backbones) adds
    ``clip_image_emb.npy`` for text search.
    """
    out, root = Path(out_dir), Path(images_dir).resolve()
    _check_target(out, force)
    if cfg is not None:
        check_embedding_config(cfg)
    names = list_images(root)
    if not names:
        raise ValueError(f"no images under {root}")
    checkpoint = Path(checkpoint).resolve()
    model, ckpt_cfg = load_model(checkpoint)
    check_factory(factory, model.embed_dim, key="--factory (infer.index)")
    sha = checkpoint_hash(checkpoint)
    cfg = cfg if cfg is not None else ckpt_cfg
    spec = clip_spec(cfg) if clip_features is not False else None
    if clip_features and spec is None:
        raise ValueError(f"CLIP image features need an open_clip backbone, not {cfg.model.backbone}")
    settings = _embedding_settings(cfg, model)
    emb, clip_emb, ok = _embed_all(model, [root / n for n in names], settings, spec, "index")
    keep = np.flatnonzero(ok)
    if keep.size == 0:
        raise ValueError(f"no readable image under {root}")
    factory = resolve_factory(factory, int(keep.size))  # the manifest records what was built
    index = build_index(emb[keep], factory, ef_search=cfg.infer.ef_search, nprobe=cfg.infer.nprobe,
                        seed=cfg.seed)
    manifest = {"format_version": FORMAT_VERSION, "simsearch_version": __version__, "created": _now(),
                "checkpoint": str(checkpoint), "checkpoint_sha256": sha,
                "config": OmegaConf.to_container(cfg, resolve=True), "factory": factory,
                "dim": int(emb.shape[1]), "count": int(keep.size), "images_dir": str(root),
                "embedding": settings, "clip": None if spec is None else {**spec, "dim": int(clip_emb.shape[1])},
                "unreadable": [names[i] for i in np.flatnonzero(~ok)]}
    _write_index_dir(out, manifest, [names[i] for i in keep], emb[keep], index,
                     None if clip_emb is None else clip_emb[keep])
    log.info("indexed %d images of %s into %s (%s, dim %d)", keep.size, root, out, factory, emb.shape[1])
    return manifest


def add_to_index(index_dir: str | Path, images: str | Path | Sequence[str | Path],
                 checkpoint: str | Path | None = None) -> dict[str, Any]:
    """Embed only the images not yet in the index and append them; returns the new manifest.

    ``images``: files and/or folders (searched recursively). Existing rows are kept as they are
    (never re-embedded). ``checkpoint`` defaults to the manifest's; one with other weights is
    refused. New images are embedded with the settings stored in the manifest.
    """
    loaded = load_index_dir(index_dir)
    check_writable(loaded.folder, folder=True, what="the index folder")
    m = loaded.manifest
    ckpt = Path(checkpoint).resolve() if checkpoint else Path(m["checkpoint"])
    _check_same_checkpoint(m, ckpt, loaded.folder, "add to")
    present = set(loaded.ids)
    new = [(i, p) for i, p in _collect(images, loaded.images_dir) if i not in present]
    if not new:
        log.info("nothing to add: every image is already in %s", loaded.folder)
        return m
    model, _ = load_model(ckpt)
    emb, clip_emb, ok = _embed_all(model, [p for _, p in new], m["embedding"], m["clip"], "adding")
    keep = np.flatnonzero(ok)
    if keep.size:
        loaded.index.add(as_float32_matrix(emb[keep], "new embeddings"))
    ids = loaded.ids + [new[i][0] for i in keep]
    all_emb = np.concatenate([loaded.emb, emb[keep]])
    all_clip = None if loaded.clip_emb is None else np.concatenate([loaded.clip_emb, clip_emb[keep]])
    added = {new[i][0] for i in keep}
    unreadable = sorted({u for u in m["unreadable"] if u not in added} | {new[i][0] for i in np.flatnonzero(~ok)})
    manifest = {**m, "count": len(ids), "updated": _now(), "unreadable": unreadable}
    _write_index_dir(loaded.folder, manifest, ids, all_emb, loaded.index, all_clip)
    log.info("added %d images to %s (now %d)", keep.size, loaded.folder, len(ids))
    return manifest


def _read_part(folder: Path, name: str, read: Callable[[Path], Any]) -> Any:
    """One file of an index folder; a missing, truncated or corrupt one is an error naming it."""
    path = folder / name
    with reading(path, WHAT[name], REBUILD):
        return read(path)


def _manifest_fields(mpath: Path, manifest: Any) -> None:
    if not isinstance(manifest, dict):
        raise InputFileError(mpath, f"is not the index manifest (a JSON {type(manifest).__name__}, not an "
                             "object)", REBUILD)
    missing = [k for k in ("format_version", "count", "checkpoint", "checkpoint_sha256", "images_dir",
                           "factory", "embedding") if k not in manifest]
    if missing:
        raise InputFileError(mpath, f"is not a complete index manifest (no {', '.join(missing)})", REBUILD)
    if manifest["format_version"] != FORMAT_VERSION:
        raise InputFileError(mpath, f"format_version {manifest['format_version']!r} is not {FORMAT_VERSION}",
                             "rebuild the index with this simsearch")


def load_index_dir(index_dir: str | Path) -> LoadedIndex:
    """Read an index folder and check that its files agree with each other."""
    folder = Path(index_dir)
    mpath = folder / MANIFEST_FILE
    if not mpath.is_file():
        raise FileNotFoundError(f"{folder} is not an index folder (no {MANIFEST_FILE}); "
                                "build one with simsearch index build")
    manifest = _read_part(folder, MANIFEST_FILE, lambda p: json.loads(p.read_text(encoding="utf-8")))
    _manifest_fields(mpath, manifest)
    ids = _read_part(folder, IDS_FILE, lambda p: json.loads(p.read_text(encoding="utf-8")))
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise InputFileError(folder / IDS_FILE, "is not a JSON list of image ids", REBUILD)
    emb = _read_part(folder, EMB_FILE, lambda p: np.load(p, allow_pickle=False))
    index = _read_part(folder, INDEX_FILE, lambda p: faiss.read_index(str(p)))
    clip_emb = (_read_part(folder, CLIP_FILE, lambda p: np.load(p, allow_pickle=False))
                if manifest.get("clip") else None)
    if emb.ndim != 2 or emb.shape[1] != index.d:
        raise InputFileError(folder / EMB_FILE, f"holds an array of shape {emb.shape}, not (N, {index.d}) like "
                             f"{INDEX_FILE}", REBUILD)
    sizes = {"manifest count": manifest["count"], IDS_FILE: len(ids), EMB_FILE: emb.shape[0],
             INDEX_FILE: int(index.ntotal)}
    if clip_emb is not None:
        sizes[CLIP_FILE] = clip_emb.shape[0]
    if len(set(sizes.values())) != 1:
        raise InputFileError(folder, f"is an inconsistent index folder: {sizes}", REBUILD)
    log.info("loaded index %s: %d images of %s (%s)", folder, len(ids), manifest["images_dir"],
             manifest["factory"])
    return LoadedIndex(folder, manifest, ids, emb, index, clip_emb)


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
    query = Path(query_image_path)
    if query.is_dir():
        raise InputFileError(query, "is a folder; the query must be one image file")
    if not query.is_file():
        raise FileNotFoundError(f"{query}: the query image does not exist")
    model = loaded.embedding_model(checkpoint)
    emb, ok = _embed_files(model, [query], loaded.manifest["embedding"], "query")
    if not ok[0]:
        raise InputFileError(query, "cannot be read as an image (not an image, truncated or corrupt)")
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
    if not text or not text.strip():
        raise ValueError("the text query is empty")
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    clip, tokenizer = loaded.clip_model()
    with torch.no_grad():
        t = clip.encode_text(tokenizer([text]), normalize=True).float().numpy()[0]
    scores = loaded.clip_emb @ t
    order = np.argsort(-scores, kind="stable")[:top_k]
    return [Hit(loaded.path_of(loaded.ids[i]), float(scores[i])) for i in order]
