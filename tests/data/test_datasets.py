"""Sample lists, filtering, splits, and datasets that survive unreadable images."""
from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from simsearch.data.datasets import (
    FlatImageDataset,
    ImageDataset,
    Sample,
    SkippedImages,
    collate_skip_bad,
    drop_small_classes,
    read_manifest,
    relabel,
    scan_class_folders,
    split_train_val,
    stratified_subsample,
)

from .conftest import write_image


def _synthetic(sizes: list[int]) -> list[Sample]:
    """Samples with class c holding sizes[c] images (paths are never opened)."""
    return [Sample(f"c{c}/{i}.jpg", c) for c, n in enumerate(sizes) for i in range(n)]


# ----------------------------------------------------------------------------- folders


def test_scan_class_folders(class_tree: Path) -> None:
    samples, names = scan_class_folders(class_tree)
    assert names == ["cat", "dog", "owl"]
    assert [(Path(p).relative_to(class_tree).as_posix(), y) for p, y in samples] == [
        ("cat/0.jpg", 0), ("cat/1.jpg", 0), ("cat/2.jpg", 0),
        ("dog/0.jpg", 1), ("dog/1.jpg", 1), ("owl/0.jpg", 2),
    ]


def test_scan_missing_root(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing_dir"):
        scan_class_folders(tmp_path / "missing_dir")


def test_scan_root_is_a_file(tmp_path: Path) -> None:
    path = write_image(tmp_path / "single.jpg")
    with pytest.raises(ValueError, match="single.jpg is a file"):
        scan_class_folders(path)


def test_scan_empty_root(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty has no class sub-folders"):
        scan_class_folders(tmp_path / "empty")


def test_scan_class_folders_without_images(tmp_path: Path) -> None:
    (tmp_path / "root" / "a").mkdir(parents=True)
    (tmp_path / "root" / "a" / "x.txt").write_text("x")
    with pytest.raises(ValueError, match="no images found under .*root"):
        scan_class_folders(tmp_path / "root")


def test_drop_small_classes_logs(class_tree: Path, caplog: pytest.LogCaptureFixture) -> None:
    samples, names = scan_class_folders(class_tree)
    with caplog.at_level(logging.INFO, logger="simsearch.data"):
        kept, kept_names = drop_small_classes(samples, names, min_images=2)
    assert kept_names == ["cat", "dog"]
    assert Counter(y for _, y in kept) == {0: 3, 1: 2}
    assert "dropped 1 classes with fewer than 2 images (1 images)" in caplog.text
    assert caplog.records[-1].name == "simsearch.data"


def test_drop_small_classes_relabels_and_fails_when_nothing_left() -> None:
    kept, names = drop_small_classes(_synthetic([1, 2, 1, 3]), ["a", "b", "c", "d"], 2)
    assert names == ["b", "d"] and [y for _, y in kept] == [0, 0, 1, 1, 1]
    with pytest.raises(ValueError, match="no class has at least 5 images"):
        drop_small_classes(_synthetic([1, 2]), ["a", "b"], 5)


# ----------------------------------------------------------------------------- manifest


def test_read_manifest(tmp_path: Path) -> None:
    write_image(tmp_path / "imgs" / "a.jpg")
    write_image(tmp_path / "imgs" / "b.png")
    absolute = write_image(tmp_path / "elsewhere" / "c.jpg")
    csv = tmp_path / "meta" / "train.csv"
    csv.parent.mkdir()
    csv.write_text(f"path,label\n../imgs/a.jpg,zebra\n../imgs/b.png,10\n{absolute},zebra\n")
    samples, names = read_manifest(csv)
    assert names == ["10", "zebra"]
    assert [y for _, y in samples] == [1, 0, 1]
    assert Path(samples[0].path).resolve() == (tmp_path / "imgs" / "a.jpg").resolve()
    assert samples[2].path == str(absolute)


def test_manifest_missing_column(tmp_path: Path) -> None:
    csv = tmp_path / "m.csv"
    csv.write_text("path,class\nx.jpg,a\n")
    with pytest.raises(ValueError, match=r"m\.csv: line 1: missing column 'label'"):
        read_manifest(csv)


def test_manifest_missing_image_named_with_line(tmp_path: Path) -> None:
    write_image(tmp_path / "ok.jpg")
    csv = tmp_path / "m.csv"
    csv.write_text("path,label\nok.jpg,a\ngone.jpg,b\n")
    with pytest.raises(FileNotFoundError, match=r"m\.csv: 1 image files .*line 3: .*gone\.jpg"):
        read_manifest(csv)


def test_manifest_missing_or_empty(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nothing.csv"):
        read_manifest(tmp_path / "nothing.csv")
    (tmp_path / "e.csv").write_text("path,label\n")
    with pytest.raises(ValueError, match="e.csv: no rows"):
        read_manifest(tmp_path / "e.csv")


# ----------------------------------------------------------------------------- subsets


def test_stratified_subsample_keeps_every_class() -> None:
    samples = _synthetic([100, 10, 3, 1])
    sub = stratified_subsample(samples, 0.1, seed=0)
    # round(n * 0.1) but at least min(2, n): 10, 2, 2, 1
    assert Counter(y for _, y in sub) == {0: 10, 1: 2, 2: 2, 3: 1}
    assert sub == stratified_subsample(samples, 0.1, seed=0)
    assert sub != stratified_subsample(samples, 0.1, seed=1)
    assert sub == sorted(sub, key=samples.index)  # original order kept
    assert stratified_subsample(samples, 1.0, seed=0) == samples
    with pytest.raises(ValueError):
        stratified_subsample(samples, 0.0, seed=0)


def test_split_by_image() -> None:
    sizes = [20, 10, 4, 3, 2] + [5] * 40
    samples = _synthetic(sizes)
    train, val = split_train_val(samples, 0.2, by="image", seed=3)
    assert set(train).isdisjoint(val) and len(train) + len(val) == len(samples)
    assert (train, val) == split_train_val(samples, 0.2, by="image", seed=3)
    assert val != split_train_val(samples, 0.2, by="image", seed=4)[1]
    n_train, n_val = Counter(y for _, y in train), Counter(y for _, y in val)
    assert set(n_train) == set(range(len(sizes)))  # every class still trains
    assert all(n_train[c] >= 2 for c in range(len(sizes)))
    assert all(n >= 2 for n in n_val.values())  # a val query always has a positive
    assert n_val[0] == 4 and n_val[1] == 2  # round(20 * .2), round(10 * .2)
    assert n_val[3] == 0 and n_val[4] == 0  # 3 or 2 images cannot give 2 + 2
    assert 0.1 < len(val) / len(samples) < 0.3


def test_split_by_class() -> None:
    samples = _synthetic([3] * 20)
    train, val = split_train_val(samples, 0.25, by="class", seed=0)
    train_cls, val_cls = {y for _, y in train}, {y for _, y in val}
    assert train_cls.isdisjoint(val_cls) and len(val_cls) == 5
    assert train_cls | val_cls == set(range(20))
    assert len(val) == 15 and len(train) == 45
    assert (train, val) == split_train_val(samples, 0.25, by="class", seed=0)
    relabelled, old = relabel(train)
    assert old == sorted(train_cls) and {y for _, y in relabelled} == set(range(15))
    with pytest.raises(ValueError, match="at least 4 classes"):
        split_train_val(_synthetic([3, 3, 3]), 0.5, by="class", seed=0)


def test_split_zero_and_bad_arguments() -> None:
    samples = _synthetic([4, 4])
    assert split_train_val(samples, 0.0, by="image", seed=0) == (samples, [])
    with pytest.raises(ValueError, match="val_split"):
        split_train_val(samples, 0.5, by="folder", seed=0)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- datasets


def _to_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image).permute(2, 0, 1).float()


def _dataset_with_bad_file(tmp_path: Path) -> tuple[ImageDataset, str]:
    good = [write_image(tmp_path / f"g{i}.png", color=(i, 0, 0), size=(4, 4)) for i in range(7)]
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 definitely not the rest of a JPEG")
    paths = [str(p) for p in good[:3]] + [str(bad)] + [str(p) for p in good[3:]]
    return ImageDataset([(p, i % 2) for i, p in enumerate(paths)], _to_tensor), str(bad)


@pytest.mark.parametrize("workers", [0, 2])
def test_bad_image_skipped_and_reported(tmp_path: Path, workers: int,
                                        caplog: pytest.LogCaptureFixture) -> None:
    dataset, bad = _dataset_with_bad_file(tmp_path)
    loader = DataLoader(dataset, batch_size=3, num_workers=workers, collate_fn=collate_skip_bad)
    skipped, seen = SkippedImages(), []
    with caplog.at_level(logging.WARNING, logger="simsearch.data"):
        for images, labels, indices, bad_indices in loader:
            assert images.shape == (len(labels), 3, 4, 4)
            seen.extend(indices.tolist())
            skipped.update(dataset, bad_indices)
    assert seen == [0, 1, 2, 4, 5, 6, 7]  # the epoch completed without index 3
    assert skipped.paths == [bad]
    assert skipped.summary() == f"skipped 1 unreadable images: {bad}"
    if workers == 0:  # worker processes log to their own handlers
        assert f"skipping unreadable image {bad}" in caplog.text


def test_dataset_item_and_all_bad_batch(tmp_path: Path) -> None:
    dataset, _ = _dataset_with_bad_file(tmp_path)
    image, label, index = dataset[2]
    assert image.shape == (3, 4, 4) and image[0, 0, 0].item() == 2 and (label, index) == (0, 2)
    images, labels, indices, bad = collate_skip_bad([dataset[3], dataset[3]])
    assert images.shape == (0,) and labels.shape == (0,) and indices.shape == (0,)
    assert bad.tolist() == [3, 3]


def test_flat_image_dataset(tmp_path: Path) -> None:
    folder = tmp_path / "query"
    for name in ["b.jpg", "a.png", "c.JPEG"]:
        write_image(folder / name, size=(5, 6))
    (folder / "readme.txt").write_text("x")
    (folder / "c.jpg").write_text("not an image")
    (folder / "sub").mkdir()
    ds = FlatImageDataset(folder)
    assert ds.names == ["a.png", "b.jpg", "c.JPEG", "c.jpg"]
    image, label, index = ds[1]
    assert image.shape == (3, 6, 5) and image.dtype == torch.float32 and (label, index) == (-1, 1)
    assert float(image.max()) <= 1.0
    images, labels, indices, bad = collate_skip_bad([ds[i] for i in range(len(ds))])
    assert indices.tolist() == [0, 1, 2] and bad.tolist() == [3]
    assert labels.tolist() == [-1, -1, -1]


def test_flat_image_dataset_reads_sub_folders_by_relative_path(tmp_path: Path) -> None:
    folder = tmp_path / "gallery"
    for rel in ["z.jpg", "a/b/x.jpg", "a/y.png", "b/x.jpg"]:
        write_image(folder / rel)
    write_image(folder / ".hidden" / "h.jpg")  # hidden folders and files are skipped
    write_image(folder / "a" / "._x.jpg")
    ds = FlatImageDataset(folder)
    assert ds.names == ["a/b/x.jpg", "a/y.png", "b/x.jpg", "z.jpg"]  # sorted POSIX paths below the folder
    assert ds.paths[0] == str(folder / "a" / "b" / "x.jpg")


def test_flat_image_dataset_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        FlatImageDataset(tmp_path / "nowhere")
    (tmp_path / "blank").mkdir()
    with pytest.raises(ValueError, match="no images in .*blank"):
        FlatImageDataset(tmp_path / "blank")
