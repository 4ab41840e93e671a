"""DeepFashion In-shop Clothes Retrieval: the published split in this package's competition layout.

``list_eval_partition.txt`` (Liu et al., CVPR 2016) reads::

    52712
    image_name item_id evaluation_status
    img/WOMEN/Dresses/id_00000002/02_1_front.jpg id_00000002 train
    ...

with status train, query or gallery. ``build_inshop`` turns it into the layout that
``simsearch train``, ``simsearch infer`` and ``simsearch score`` read (as ``../shared/data/caltech101``
and the demo competition): ``training/<item_id>/<image>``, ``test/query/<image>``,
``test/gallery/<image>`` and ``test/ground_truth.json`` ({query: gallery images of the same item}).
Image names are the list's paths with ``/`` turned into ``__`` (``img/`` dropped), so they stay
unique and flat; files are symlinked (or copied). Queries whose item has no gallery image are
left out (none in the published split) and counted.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from simsearch.utils.fs import atomic_folder

__all__ = ["InShopRow", "build_inshop", "find_partition_file", "flat_name", "read_partition"]

log = logging.getLogger("simsearch.data.inshop")

HEADER = ("image_name", "item_id", "evaluation_status")
STATUSES = ("train", "query", "gallery")
PARTITION = "list_eval_partition.txt"


@dataclass(frozen=True)
class InShopRow:
    image: str  # path as in the list, e.g. img/WOMEN/Dresses/id_00000002/02_1_front.jpg
    item_id: str
    status: str
    line: int


def read_partition(path: str | Path) -> list[InShopRow]:
    """Parse the partition list strictly; a bad line is a ValueError naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"In-shop partition list {path} does not exist")
    lines = path.read_text(encoding="utf-8").splitlines()
    if len(lines) < 2:
        raise ValueError(f"{path}: expected a count line and a header line, got {len(lines)} line(s)")
    try:
        count = int(lines[0].strip())
    except ValueError:
        raise ValueError(f"{path}: line 1: expected the number of images, got {lines[0].strip()!r}") from None
    if tuple(lines[1].split()) != HEADER:
        raise ValueError(f"{path}: line 2: expected the header {' '.join(HEADER)!r}, got {lines[1].strip()!r}")
    rows: list[InShopRow] = []
    seen: dict[str, int] = {}
    for number, text in enumerate(lines[2:], start=3):
        fields = text.split()
        if not fields:
            continue
        if len(fields) != 3:
            raise ValueError(f"{path}: line {number}: expected 3 fields (image_name item_id evaluation_status), "
                             f"got {len(fields)}: {text.strip()!r}")
        image, item, status = fields
        if status not in STATUSES:
            raise ValueError(f"{path}: line {number}: evaluation_status {status!r} is not one of "
                             f"{', '.join(STATUSES)}")
        if image in seen:
            raise ValueError(f"{path}: line {number}: {image} already listed on line {seen[image]}")
        seen[image] = number
        rows.append(InShopRow(image, item, status, number))
    if len(rows) != count:
        raise ValueError(f"{path}: line 1 says {count} images but {len(rows)} are listed")
    return rows


def flat_name(image: str) -> str:
    """``img/WOMEN/Dresses/id_00000002/02_1_front.jpg`` -> ``WOMEN__Dresses__id_00000002__02_1_front.jpg``."""
    parts = Path(image).parts
    if parts and parts[0] == "img":
        parts = parts[1:]
    return "__".join(parts)


def find_partition_file(root: Path) -> Path:
    """The list at ROOT/, ROOT/Eval/ or ROOT/Anno/ (the release's folders)."""
    tried = [root / PARTITION, root / "Eval" / PARTITION, root / "Anno" / PARTITION]
    for p in tried:
        if p.is_file():
            return p
    raise FileNotFoundError(f"no {PARTITION} in {root}; tried {', '.join(map(str, tried))}")


def _image_root(root: Path, rows: list[InShopRow]) -> Path:
    """ROOT or ROOT/Img: the folder that holds the listed ``img/...`` paths."""
    candidates = [root, root / "Img"]
    for base in candidates:
        if (base / rows[0].image).is_file():
            return base
    raise FileNotFoundError(f"image {rows[0].image} (line {rows[0].line}) is in none of "
                            f"{', '.join(map(str, candidates))}; unzip img.zip under {root}")


def _place(src: Path, dst: Path, copy: bool) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if copy:
        shutil.copy2(src, dst)
    else:
        os.symlink(src.resolve(), dst)


def build_inshop(root: str | Path, out_dir: str | Path, copy: bool = False, force: bool = False,
                 partition: str | Path | None = None) -> dict[str, int]:
    """Write the competition layout under ``out_dir`` (built beside it, renamed in); returns counts.

    ``partition`` defaults to the list found under ``root``; every listed image must exist.
    """
    root, out = Path(root), Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise FileExistsError(f"{out} exists and is not empty; pass --force to replace it")
    rows = read_partition(partition or find_partition_file(root))
    if not rows:
        raise ValueError("the In-shop partition list has no images")
    base = _image_root(root, rows)
    missing = [r for r in rows if not (base / r.image).is_file()]
    if missing:
        shown = "; ".join(f"line {r.line}: {base / r.image}" for r in missing[:5])
        raise FileNotFoundError(f"{len(missing)} listed image(s) do not exist: {shown}")
    gallery_of: dict[str, list[str]] = defaultdict(list)
    for r in rows:
        if r.status == "gallery":
            gallery_of[r.item_id].append(flat_name(r.image))
    counts = {"train_images": 0, "train_items": 0, "queries": 0, "gallery": 0, "queries_without_gallery": 0}
    with atomic_folder(out) as tmp:
        truth: dict[str, list[str]] = {}
        for r in rows:
            name = flat_name(r.image)
            if r.status == "train":
                _place(base / r.image, tmp / "training" / r.item_id / name, copy)
                counts["train_images"] += 1
            elif r.status == "gallery":
                _place(base / r.image, tmp / "test" / "gallery" / name, copy)
                counts["gallery"] += 1
            elif gallery_of.get(r.item_id):
                _place(base / r.image, tmp / "test" / "query" / name, copy)
                truth[name] = sorted(gallery_of[r.item_id])
            else:
                counts["queries_without_gallery"] += 1
        counts["queries"] = len(truth)
        counts["train_items"] = len({r.item_id for r in rows if r.status == "train"})
        for sub in ("query", "gallery"):
            (tmp / "test" / sub).mkdir(parents=True, exist_ok=True)
        (tmp / "test" / "ground_truth.json").write_text(json.dumps(truth, indent=1, sort_keys=True) + "\n")
    if counts["queries_without_gallery"]:
        log.warning("left out %d queries whose item has no gallery image", counts["queries_without_gallery"])
    log.info("In-shop layout in %s: %s", out, counts)
    return counts
