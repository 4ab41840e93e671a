"""Where the query and gallery images come from: folders, CSV manifests, or one test CSV.

``simsearch infer`` takes, for each side, a folder (``--query-dir``, searched recursively; names are
the POSIX paths below it) or a manifest (``--query-csv``; names are the ``data.columns.id`` values, or
the path values), or one test CSV for both (``--test-csv``: its ``is_query``/``is_gallery`` columns say
which rows query, which are searched, or both). Every source is read and checked here, before any
model is loaded, so a missing file or column stops the command at once.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from simsearch.data import IMAGE_EXTENSIONS, ManifestItem, ManifestSpec, list_image_files, read_items
from simsearch.data.manifest import manifest_columns, split_query_gallery

__all__ = ["ImageSet", "as_image_set", "csv_set", "folder_set", "query_gallery_sets", "self_matches",
           "sets_from_test_csv"]

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class ImageSet:
    """A query or gallery set: each item's name (as a submission writes it), image file and label
    (None when the source has no labels); ``source`` is the folder or CSV, for messages."""

    source: Path
    names: list[str]
    paths: list[str]
    labels: list[str] | None = None

    def __len__(self) -> int:
        return len(self.names)


def folder_set(folder: PathLike, flag: str = "folder") -> ImageSet:
    """Every image below ``folder`` (hidden files and folders skipped), named by its relative POSIX path."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"{flag}: {root} does not exist or is not a folder")
    names = list_image_files(root)
    if not names:
        raise ValueError(f"{flag}: no images in {root} (extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})")
    return ImageSet(root, names, [str(root / n) for n in names])


def _from_items(csv_path: Path, items: list[ManifestItem], labels: bool) -> ImageSet:
    return ImageSet(csv_path, [i.name for i in items], [i.path for i in items],
                    [str(i.label) for i in items] if labels else None)


def _has_labels(csv_path: Path, spec: ManifestSpec, labels: bool | None) -> bool:
    """Read the label column when asked (True), or when the CSV has it (None)."""
    return labels if labels is not None else spec.label in manifest_columns(csv_path)


def csv_set(csv_path: PathLike, spec: ManifestSpec, labels: bool | None = None) -> ImageSet:
    """The rows of a query or gallery manifest, each name once, every image checked to exist."""
    csv_path = Path(csv_path)
    with_labels = _has_labels(csv_path, spec, labels)
    return _from_items(csv_path, read_items(csv_path, spec, label=with_labels), with_labels)


def sets_from_test_csv(csv_path: PathLike, spec: ManifestSpec,
                       labels: bool | None = None) -> tuple[ImageSet, ImageSet]:
    """(queries, gallery) of a test CSV: the rows with ``is_query`` true and those with ``is_gallery``
    true (a row may be both: then it is never ranked for itself, see ``infer.exclude_self``)."""
    csv_path = Path(csv_path)
    with_labels = _has_labels(csv_path, spec, labels)
    items = read_items(csv_path, spec, label=with_labels, roles=True)
    query, gallery = split_query_gallery(csv_path, items)
    return _from_items(csv_path, query, with_labels), _from_items(csv_path, gallery, with_labels)


def as_image_set(source: PathLike | ImageSet, flag: str) -> ImageSet:
    """An ImageSet as it is, a folder path as :func:`folder_set` reads it."""
    return source if isinstance(source, ImageSet) else folder_set(source, flag)


def _one_of(dir_: PathLike | None, csv: PathLike | None, side: str) -> None:
    if (dir_ is None) == (csv is None):
        raise ValueError(f"give exactly one of --{side}-dir and --{side}-csv (or --test-csv for both sides)")


def query_gallery_sets(cfg: DictConfig, query_dir: PathLike | None = None, gallery_dir: PathLike | None = None,
                       query_csv: PathLike | None = None, gallery_csv: PathLike | None = None,
                       test_csv: PathLike | None = None, labels: bool | None = None) -> tuple[ImageSet, ImageSet]:
    """The (queries, gallery) that the command line names, read and checked; manifests use the config's
    ``data.columns``, ``data.path_template`` and ``data.image_root``. ``labels``: read the label column
    (True), only when the CSVs have one (None), or never (False)."""
    spec = ManifestSpec.from_config(cfg.data)
    if test_csv is not None:
        if any(x is not None for x in (query_dir, gallery_dir, query_csv, gallery_csv)):
            raise ValueError("--test-csv gives both the queries and the gallery; drop --query-* and --gallery-*")
        return sets_from_test_csv(test_csv, spec, labels)
    _one_of(query_dir, query_csv, "query")
    _one_of(gallery_dir, gallery_csv, "gallery")
    query = folder_set(query_dir, "--query-dir") if query_csv is None else csv_set(query_csv, spec, labels)
    gallery = (folder_set(gallery_dir, "--gallery-dir") if gallery_csv is None
               else csv_set(gallery_csv, spec, labels))
    return query, gallery


def self_matches(query: Any, gallery: Any) -> np.ndarray:
    """For each readable query, the position among the readable gallery images of the query itself
    (the same name and the same file), else -1. A test CSV row that queries and is searched is one.

    ``query``, ``gallery``: embedded sets (``names``, ``paths`` and the readable mask ``ok``).
    """
    pos = {}
    for j, (name, path) in enumerate(zip(np.asarray(gallery.names)[gallery.ok],
                                         np.asarray(gallery.paths)[gallery.ok])):
        pos[str(name)] = (j, os.path.realpath(path))
    out = []
    for name, path, ok in zip(query.names, query.paths, query.ok):
        if ok:
            j, gpath = pos.get(name, (-1, None))
            out.append(j if gpath == os.path.realpath(path) else -1)
    return np.asarray(out, dtype=np.int64)
