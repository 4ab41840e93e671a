"""Multi-crop queries: search with several crops of each query image and fuse the rankings.

A catalogue photo shows one product; a query photo often shows a person wearing several. A
detector proposes boxes (ultralytics YOLO, ``detector: yolo:WEIGHTS_OR_YAML``), or, without
one, a fixed set of crops (``detector: grid``: a centre crop plus an n x n grid). Each crop is
embedded like a query and searched; the rankings are fused per query (see ``fusion.py``).
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from simsearch.config import section_values
from simsearch.data.datasets import BadSample
from simsearch.data.io import ImageLoadError, load_image
from simsearch.retrieval.fusion import FUSIONS, fuse_per_query

__all__ = ["Box", "CropDataset", "MultiCropOptions", "YoloDetector", "build_detector", "crop_items",
           "grid_boxes", "propose_boxes", "search_index_multicrop"]

log = logging.getLogger("simsearch.multicrop")

Box = tuple[int, int, int, int]  # left, top, right, bottom in pixels (right/bottom exclusive)
Detector = Callable[[np.ndarray], list[Box]]


@dataclass(frozen=True)
class MultiCropOptions:
    """The ``infer.multicrop`` config section."""

    enabled: bool = False
    detector: str = "grid"
    grid: int = 2
    centre_frac: float = 0.6
    fusion: str = "rrf"
    rrf_k: float = 60.0
    max_crops: int = 5
    min_box_frac: float = 0.05
    include_full: bool = True
    conf: float = 0.25

    @classmethod
    def from_config(cls, section: Any, **changes: Any) -> "MultiCropOptions":
        values = section_values(cls, section, changes)
        opts = cls(**values)
        opts.check()
        return opts

    def check(self) -> None:
        """Raise ValueError naming the ``infer.multicrop`` key at fault."""
        if self.fusion not in FUSIONS:
            raise ValueError(f"infer.multicrop.fusion: '{self.fusion}' must be one of {', '.join(FUSIONS)}")
        if self.detector != "grid" and not self.detector.startswith("yolo:"):
            raise ValueError(f"infer.multicrop.detector: '{self.detector}' must be grid or yolo:PATH")
        if self.max_crops < 1:
            raise ValueError(f"infer.multicrop.max_crops must be >= 1, got {self.max_crops}")
        if self.grid < 1:
            raise ValueError(f"infer.multicrop.grid must be >= 1, got {self.grid}")
        if not 0.0 < self.centre_frac <= 1.0:
            raise ValueError(f"infer.multicrop.centre_frac must be in (0, 1], got {self.centre_frac}")
        if not 0.0 <= self.min_box_frac < 1.0:
            raise ValueError(f"infer.multicrop.min_box_frac must be in [0, 1), got {self.min_box_frac}")


# --------------------------------------------------------------------------- proposals


def grid_boxes(width: int, height: int, grid: int = 2, centre_frac: float = 0.6) -> list[Box]:
    """The detector-free crops: a centred box of ``centre_frac`` of each side, then the grid cells
    row by row (the last row/column absorbs the remainder)."""
    cw, ch = max(1, round(width * centre_frac)), max(1, round(height * centre_frac))
    x0, y0 = (width - cw) // 2, (height - ch) // 2
    boxes = [(x0, y0, x0 + cw, y0 + ch)]
    xs = [round(i * width / grid) for i in range(grid + 1)]
    ys = [round(j * height / grid) for j in range(grid + 1)]
    boxes += [(xs[i], ys[j], xs[i + 1], ys[j + 1]) for j in range(grid) for i in range(grid)]
    return [b for b in boxes if b[2] > b[0] and b[3] > b[1]]


class YoloDetector:
    """Boxes from an ultralytics YOLO model, most confident first.

    ``weights``: a local ``.pt`` file (a trained garment detector) or a model ``.yaml`` (random
    init: only for tests). Nothing is downloaded: a missing file is an error.
    """

    def __init__(self, weights: str | Path, conf: float = 0.25, imgsz: int = 640) -> None:
        os.environ.setdefault("YOLO_OFFLINE", "1")  # skip ultralytics' DNS probe at import: we never download
        try:
            from ultralytics import YOLO
        except ImportError as exc:  # the optional extra
            raise ImportError("infer.multicrop.detector=yolo:... needs ultralytics: "
                              "pip install 'simsearch[detect]'") from exc
        path = Path(weights)
        if path.suffix == ".pt" and not path.is_file():
            raise FileNotFoundError(f"infer.multicrop.detector: YOLO weights {path} not found "
                                    "(give a local .pt file; nothing is downloaded)")
        self.model = YOLO(str(path))
        self.conf, self.imgsz = conf, imgsz
        log.info("multi-crop detector: YOLO from %s (conf %.2f)", path, conf)

    def __call__(self, image: np.ndarray) -> list[Box]:
        result = self.model.predict(image, conf=self.conf, imgsz=self.imgsz, verbose=False)[0]
        xyxy = result.boxes.xyxy.cpu().numpy()
        order = np.argsort(-result.boxes.conf.cpu().numpy(), kind="stable")
        return [tuple(int(round(v)) for v in xyxy[i]) for i in order]  # type: ignore[misc]


def build_detector(opts: MultiCropOptions) -> Detector | None:
    """None for the grid (it needs only the image size), else the detector named by the config."""
    if opts.detector == "grid":
        return None
    return YoloDetector(opts.detector.removeprefix("yolo:"), conf=opts.conf)


def _clip_box(box: Box, width: int, height: int) -> Box:
    x0, y0, x1, y1 = box
    return (max(0, min(x0, width)), max(0, min(y0, height)), max(0, min(x1, width)), max(0, min(y1, height)))


def propose_boxes(image: np.ndarray, opts: MultiCropOptions, detector: Detector | None = None) -> list[Box]:
    """The crops to search with: the whole image first (``include_full``), then the proposals
    (detector boxes of at least ``min_box_frac`` of the area, or the grid), at most ``max_crops``.
    A query always gets at least one crop: the whole image when nothing else is left."""
    height, width = image.shape[:2]
    full = (0, 0, width, height)
    raw = grid_boxes(width, height, opts.grid, opts.centre_frac) if detector is None else detector(image)
    boxes = [full] if opts.include_full else []
    min_area = opts.min_box_frac * width * height
    for box in raw:
        b = _clip_box(box, width, height)
        if (b[2] - b[0]) * (b[3] - b[1]) >= max(min_area, 1) and b not in boxes:
            boxes.append(b)
    return boxes[: opts.max_crops] or [full]


def crop_items(paths: Sequence[str | Path], opts: MultiCropOptions, detector: Detector | None = None
               ) -> tuple[list[tuple[str, Box | None]], np.ndarray]:
    """(path, box) for every crop of every image, and the image index of each crop.

    An unreadable image gets one item with box None, which CropDataset reports as unreadable.
    """
    items: list[tuple[str, Box | None]] = []
    owner: list[int] = []
    for i, path in enumerate(paths):
        try:
            image = np.asarray(load_image(path))
        except ImageLoadError:
            items.append((str(path), None))
            owner.append(i)
            continue
        for box in propose_boxes(image, opts, detector):
            items.append((str(path), box))
            owner.append(i)
    return items, np.asarray(owner, dtype=np.int64)


class CropDataset(Dataset):
    """Crops of images, transformed like queries; same item protocol as ImageDataset."""

    def __init__(self, items: Sequence[tuple[str, Box | None]], transform: Callable[[np.ndarray], torch.Tensor]):
        self.items, self.transform = list(items), transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int] | BadSample:
        path, box = self.items[index]
        try:
            if box is None:
                raise ImageLoadError(path, "unreadable")
            image = np.asarray(load_image(path))
        except ImageLoadError as exc:
            return BadSample(index, path, exc.reason)
        x0, y0, x1, y1 = box
        return self.transform(np.ascontiguousarray(image[y0:y1, x0:x1])), -1, index


# --------------------------------------------------------------------------- index search


def search_index_multicrop(index: Any, query_image_path: str | Path, top_k: int, opts: MultiCropOptions,
                           checkpoint: str | Path | None = None) -> list[Any]:
    """``simsearch search --multicrop``: embed the crops of one image like the index's images,
    search each, fuse; hits carry the fused score (RRF score, or the best cosine for max)."""
    from simsearch.data import build_transforms
    from simsearch.retrieval.embed import embed_dataset
    from simsearch.retrieval.index import search
    from simsearch.retrieval.store import Hit, load_index_dir

    loaded = index if hasattr(index, "manifest") else load_index_dir(index)
    query = Path(query_image_path)
    if not query.is_file():
        raise FileNotFoundError(f"query image {query} does not exist")
    model = loaded.embedding_model(checkpoint)
    s = loaded.manifest["embedding"]
    items, _ = crop_items([query], opts, build_detector(opts))
    if items[0][1] is None:
        raise ValueError(f"cannot read the query image {query}")
    transform = build_transforms(s["image_size"], s["mean"], s["std"], train=False, resize_ratio=s["resize_ratio"])
    emb, _ = embed_dataset(model, CropDataset(items, transform), None, batch_size=s["batch_size"],
                           tta_flip=s["tta_flip"], scales=tuple(s["tta_scales"]), desc="query crops",
                           precision=s.get("precision", "auto"))
    k = min(top_k, len(loaded.ids))
    scores, ids = search(loaded.index, emb, k)
    fused_ids, fused_scores = fuse_per_query(ids, scores, np.zeros(len(items), dtype=np.int64), 1,
                                             opts.fusion, k, opts.rrf_k)
    log.info("searched %d crops of %s (%s fusion)", len(items), query, opts.fusion)
    return [Hit(loaded.path_of(loaded.ids[j]), float(sc))
            for j, sc in zip(fused_ids[0], fused_scores[0]) if j >= 0]
