"""Sample lists (folder or CSV), class filtering, subsampling, train/val splits and datasets.

A sample is ``(path, label)`` with ``label`` an index into ``class_names``. Every
function here is deterministic: file lists are sorted and randomness comes only from
an explicit ``seed``.

Unreadable images never crash an epoch: :class:`ImageDataset` returns a
:class:`BadSample` marker for them, :func:`collate_skip_bad` drops the markers and
reports their dataset indices as the batch's 4th element, and :class:`SkippedImages`
collects those indices (in the main process, whatever the number of workers) into
the closing "skipped N unreadable images: ..." line.
"""
from __future__ import annotations

import logging
import math
import os
import random
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from simsearch.data.io import IMAGE_EXTENSIONS, ImageLoadError, is_image_file, load_image
from simsearch.data.manifest import ManifestSpec, manifest_columns, read_items, resolve_manifest_path

__all__ = ["BadSample", "FlatImageDataset", "ImageDataset", "NamedImageDataset", "Sample", "SkippedImages",
           "collate_pairs_skip_bad", "collate_skip_bad", "drop_small_classes", "list_image_files",
           "manifest_columns", "read_manifest", "relabel", "resolve_manifest_path", "scan_class_folders",
           "split_train_val", "stratified_subsample", "to_float_tensor"]

logger = logging.getLogger("simsearch.data")

PathLike = str | os.PathLike[str]
Transform = Callable[[np.ndarray], torch.Tensor]


class Sample(NamedTuple):
    """One image and its class index."""

    path: str
    label: int


# --------------------------------------------------------------------------- sources


def _check_folder(root: PathLike, what: str) -> Path:
    """Return ``root`` as a Path, or raise naming it when it is missing or a file."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"{root}: the {what} does not exist")
    if not root.is_dir():
        raise ValueError(f"{root} is a file; the {what} must be a folder")
    return root


def scan_class_folders(root: PathLike) -> tuple[list[Sample], list[str]]:
    """Read a ROOT/<class>/<image> tree (images may sit in sub-folders of a class).

    Classes are the sorted sub-folder names that hold at least one image; hidden
    entries and non-image files are ignored. Raises FileNotFoundError / ValueError
    naming ``root`` when it is missing, a file, or holds no class folder with images.
    """
    root = _check_folder(root, "image folder")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    loose = [p.name for p in root.iterdir() if p.is_file() and is_image_file(p)]
    if loose:
        logger.warning(
            "ignoring %d images directly in %s (expected ROOT/<class>/<image>)", len(loose), root
        )
    if not class_dirs:
        raise ValueError(f"{root} has no class sub-folders; expected ROOT/<class>/<image>")
    samples: list[Sample] = []
    class_names: list[str] = []
    empty: list[str] = []
    for class_dir in class_dirs:
        files = sorted(
            p for p in class_dir.rglob("*")
            if p.is_file() and is_image_file(p)
            and not any(part.startswith(".") for part in p.relative_to(class_dir).parts)
        )
        if not files:
            empty.append(class_dir.name)
            continue
        label = len(class_names)
        class_names.append(class_dir.name)
        samples.extend(Sample(str(p), label) for p in files)
    if empty:
        logger.warning("ignoring %d class folders without images in %s: %s",
                       len(empty), root, ", ".join(empty[:10]))
    if not samples:
        raise ValueError(
            f"no images found under {root} (extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})"
        )
    return samples, class_names


def read_manifest(csv_path: PathLike, spec: ManifestSpec | None = None) -> tuple[list[Sample], list[str]]:
    """Training samples from a CSV manifest (labels are class names, any string).

    ``spec`` maps the columns (default: ``path`` and ``label``, paths relative to the CSV's folder;
    see :mod:`simsearch.data.manifest`). Every missing image is reported at once, with its line. A
    name may repeat only when there is no id column (an image listed twice is drawn twice). Class
    names are the sorted distinct labels.
    """
    spec = spec or ManifestSpec()
    items = read_items(csv_path, spec, label=True, unique=spec.id is not None)
    class_names = sorted({str(i.label) for i in items})
    index = {name: i for i, name in enumerate(class_names)}
    return [Sample(i.path, index[str(i.label)]) for i in items], class_names


# --------------------------------------------------------------------------- filtering


def _by_class(samples: Iterable[Sample]) -> dict[int, list[int]]:
    """Positions of the samples of each label, in sample order."""
    groups: dict[int, list[int]] = defaultdict(list)
    for i, s in enumerate(samples):
        groups[s.label].append(i)
    return dict(sorted(groups.items()))


def relabel(samples: Sequence[Sample]) -> tuple[list[Sample], list[int]]:
    """Map the labels in use onto 0..C-1, keeping their order.

    Returns the relabelled samples and, for each new label, the old one.
    Needed after a by-class split, whose train part has gaps in its label range.
    """
    old = sorted({s.label for s in samples})
    new = {o: n for n, o in enumerate(old)}
    return [Sample(s.path, new[s.label]) for s in samples], old


def drop_small_classes(
    samples: Sequence[Sample], class_names: Sequence[str], min_images: int = 2
) -> tuple[list[Sample], list[str]]:
    """Remove classes with fewer than ``min_images`` images and relabel the rest 0..C-1.

    A class with one image has no positive pair, so it cannot train a metric loss.
    """
    counts = _by_class(samples)
    keep = [c for c in range(len(class_names)) if len(counts.get(c, ())) >= min_images]
    kept_set = set(keep)
    dropped = [c for c in range(len(class_names)) if c not in kept_set]
    n_dropped_images = sum(len(counts.get(c, ())) for c in dropped)
    if dropped:
        logger.warning("dropped %d classes with fewer than %d images (%d images)",
                       len(dropped), min_images, n_dropped_images)
    if not keep:
        raise ValueError(f"no class has at least {min_images} images "
                         f"({len(class_names)} classes, {len(samples)} images)")
    new = {old: i for i, old in enumerate(keep)}
    kept = [Sample(s.path, new[s.label]) for s in samples if s.label in new]
    return kept, [class_names[c] for c in keep]


def stratified_subsample(samples: Sequence[Sample], ratio: float, seed: int) -> list[Sample]:
    """Keep about ``ratio`` of each class's images (at least min(2, n)), in original order.

    For quick runs: every class survives, so the label space is unchanged.
    """
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"sample_ratio must be in (0, 1], got {ratio}")
    if ratio == 1.0:
        return list(samples)
    rng = random.Random(seed)
    chosen: list[int] = []
    for positions in _by_class(samples).values():
        n = len(positions)
        n_keep = max(min(2, n), round(n * ratio))
        chosen.extend(rng.sample(positions, n_keep))
    return [samples[i] for i in sorted(chosen)]


# --------------------------------------------------------------------------- splits


def _val_size_by_image(n: int, val_fraction: float, rng: random.Random) -> int:
    """Validation images for a class of ``n``: 0 or >= 2, leaving >= 2 for training.

    Validation ranks each val image against the other val images, so a class with a
    single val image would be a query without a positive. Classes whose expected
    share is below 2 go to val with 2 images with probability share/2, which keeps
    the overall val fraction right on datasets made of small classes.
    """
    expected = n * val_fraction
    if expected >= 2:
        n_val = math.floor(expected + 0.5)
    else:
        n_val = 2 if rng.random() < expected / 2 else 0
    n_val = min(n_val, n - 2)
    return n_val if n_val >= 2 else 0


def split_train_val(
    samples: Sequence[Sample],
    val_fraction: float,
    by: Literal["image", "class"] = "image",
    seed: int = 0,
) -> tuple[list[Sample], list[Sample]]:
    """Split into (train, val), both in the original sample order; labels are kept.

    by="image": hold out images of classes (class-level data: the same classes are
    queried at test time); val holds 0 or >= 2 images of a class and train keeps >= 2.
    by="class": hold out whole classes (instance-level data: test classes are new);
    at least 2 classes go to each side. Train labels then have gaps: see relabel().
    """
    if val_fraction == 0:
        return list(samples), []
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    rng = random.Random(seed)
    groups = _by_class(samples)
    val: set[int] = set()
    if by == "image":
        for positions in groups.values():
            n_val = _val_size_by_image(len(positions), val_fraction, rng)
            val.update(rng.sample(positions, n_val))
        if not val:
            logger.warning("by-image validation split is empty: no class has 4+ images "
                           "(2 for training, 2 for validation); consider val_split=class")
    elif by == "class":
        classes = list(groups)
        n_val = min(max(2, math.floor(len(classes) * val_fraction + 0.5)), len(classes) - 2)
        if n_val < 2:
            raise ValueError(f"a by-class validation split needs at least 4 classes, "
                             f"got {len(classes)}")
        for c in rng.sample(classes, n_val):
            val.update(groups[c])
    else:
        raise ValueError(f"val_split must be 'image' or 'class', got {by!r}")
    train = [s for i, s in enumerate(samples) if i not in val]
    return train, [s for i, s in enumerate(samples) if i in val]


# --------------------------------------------------------------------------- datasets


class BadSample(NamedTuple):
    """Returned by a dataset in place of an unreadable image; dropped by collate_skip_bad."""

    index: int
    path: str
    reason: str


def to_float_tensor(image: np.ndarray) -> torch.Tensor:
    """Default transform: HWC uint8 -> CHW float in [0, 1] (no resizing)."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)


class ImageDataset(Dataset):
    """Images of ``samples``; item = ``(tensor CHW float, label, index)`` or a BadSample.

    ``transform`` takes the RGB image as an HWC uint8 array and returns a CHW float
    tensor of a fixed size (needed to stack a batch). Unreadable files are logged once
    per process and returned as :class:`BadSample`, so always batch this dataset with
    ``collate_fn=collate_skip_bad``.

    With ``domains`` (one name per sample) ``transform`` is a
    :class:`~simsearch.data.transforms.DomainTransforms` and each image goes through the
    pipeline of its own domain (strong for street photos, light for shop photos).
    """

    def __init__(self, samples: Sequence[tuple[str, int]], transform: Transform | None = None,
                 domains: Sequence[str] | None = None):
        self.samples = [Sample(str(p), int(label)) for p, label in samples]
        self.transform: Transform = transform if transform is not None else to_float_tensor
        self.domains = None if domains is None else list(domains)
        if self.domains is not None:
            if len(self.domains) != len(self.samples):
                raise ValueError(f"{len(self.domains)} domains for {len(self.samples)} samples")
            if not hasattr(self.transform, "pick"):
                raise ValueError("per-sample domains need a DomainTransforms transform")
        self._warned: set[int] = set()

    def transform_for(self, index: int) -> Transform:
        """The pipeline sample ``index`` goes through (its domain's, with domains)."""
        if self.domains is None:
            return self.transform
        return self.transform.pick(self.domains[index])  # type: ignore[attr-defined]

    @property
    def paths(self) -> list[str]:
        """Image path of every index (maps collate's bad indices back to files)."""
        return [s.path for s in self.samples]

    @property
    def labels(self) -> list[int]:
        """Label of every index (what PKSampler needs)."""
        return [s.label for s in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int] | BadSample:
        path, label = self.samples[index]
        try:
            image = load_image(path)
        except ImageLoadError as exc:
            if index not in self._warned:
                self._warned.add(index)
                logger.warning("skipping unreadable image %s: %s", path, exc.reason)
            return BadSample(index, path, exc.reason)
        return self.transform_for(index)(np.array(image)), label, index


class NamedImageDataset(ImageDataset):
    """Query or gallery images with the names a submission uses (``names[i]`` is index i); label -1.

    ``source`` is the folder or CSV they came from, for messages.
    """

    def __init__(self, names: Sequence[str], paths: Sequence[str], transform: Transform | None = None,
                 source: PathLike = "."):
        if len(names) != len(paths):
            raise ValueError(f"{len(names)} names for {len(paths)} image paths")
        self.names: list[str] = list(names)
        self.source = Path(source)
        super().__init__([(str(p), -1) for p in paths], transform)


def list_image_files(folder: PathLike) -> list[str]:
    """Sorted POSIX paths, relative to ``folder``, of every image below it (hidden files and
    folders skipped): ``a.jpg``, ``a/b/x.jpg``. The names query and gallery folders give."""
    root = _check_folder(folder, "image folder")
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                  if p.is_file() and is_image_file(p)
                  and not any(part.startswith(".") for part in p.relative_to(root).parts))


class FlatImageDataset(NamedImageDataset):
    """The images of a query or gallery ``folder``, sub-folders included; label is -1.

    ``names`` are the sorted POSIX paths relative to the folder (``x.jpg``, ``a/b/y.jpg``), as
    :func:`list_image_files` gives them; position i matches dataset index i.
    """

    def __init__(self, folder: PathLike, transform: Transform | None = None):
        self.folder = _check_folder(folder, "image folder")
        names = list_image_files(self.folder)
        if not names:
            raise ValueError(f"no images in {self.folder} "
                             f"(extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})")
        super().__init__(names, [str(self.folder / n) for n in names], transform, self.folder)


Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def collate_skip_bad(batch: Sequence[tuple[torch.Tensor, int, int] | BadSample | None]) -> Batch:
    """Stack the good items; return ``(images, labels, indices, bad_indices)``.

    images: (B, C, H, W) float; labels, indices: (B,) int64 (dataset indices);
    bad_indices: (nb,) int64 dataset indices of the unreadable items dropped here.
    B may be smaller than the sampler's batch, and 0 when every item failed: then
    images is an empty tensor of shape (0,) and the caller must skip the step (under
    DDP, every rank must still take part in the step, e.g. with a zero loss).
    """
    good = [item for item in batch if item is not None and not isinstance(item, BadSample)]
    bad = torch.tensor([item.index for item in batch if isinstance(item, BadSample)],
                       dtype=torch.long)
    if not good:
        empty = torch.empty(0, dtype=torch.long)
        return torch.empty(0), empty, empty.clone(), bad
    images = torch.stack([item[0] for item in good])
    labels = torch.tensor([item[1] for item in good], dtype=torch.long)
    indices = torch.tensor([item[2] for item in good], dtype=torch.long)
    return images, labels, indices, bad


def collate_pairs_skip_bad(batch: Sequence[tuple[torch.Tensor, int, int] | BadSample | None]) -> Batch:
    """collate_skip_bad for pair batches: an unreadable image drops its whole pair.

    The pair sampler puts pair i at positions (2i, 2i+1) and the pair losses read pairs
    from those positions, so dropping one image alone would pair up the wrong images.
    ``bad_indices`` still lists only the unreadable images (the partners are fine).
    """
    if len(batch) % 2:
        raise ValueError(f"a pair batch needs an even number of items, got {len(batch)}")
    kept: list = []
    for a, b in zip(batch[0::2], batch[1::2], strict=True):
        if isinstance(a, BadSample) or isinstance(b, BadSample) or a is None or b is None:
            kept += [x for x in (a, b) if isinstance(x, BadSample)]
        else:
            kept += [a, b]
    return collate_skip_bad(kept)


class SkippedImages:
    """Collects the unreadable files reported by collate_skip_bad across an epoch or run."""

    def __init__(self) -> None:
        self._paths: set[str] = set()

    def update(self, dataset: ImageDataset, bad_indices: torch.Tensor | Sequence[int]) -> None:
        """Record the files behind ``bad_indices`` (the 4th element of a batch)."""
        indices = bad_indices.tolist() if isinstance(bad_indices, torch.Tensor) else bad_indices
        self._paths.update(dataset.samples[int(i)].path for i in indices)

    @property
    def paths(self) -> list[str]:
        """Sorted paths recorded so far."""
        return sorted(self._paths)

    def __len__(self) -> int:
        return len(self._paths)

    def summary(self, limit: int = 20) -> str:
        """'skipped N unreadable images: a, b, ...' (at most ``limit`` paths listed)."""
        paths = self.paths
        more = f" (and {len(paths) - limit} more)" if len(paths) > limit else ""
        return f"skipped {len(paths)} unreadable images: {', '.join(paths[:limit])}{more}"
