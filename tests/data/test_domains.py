"""Domain augmentation: which pipeline each image gets, what each pipeline does, and bad input."""
from __future__ import annotations

from pathlib import Path

import albumentations as A
import numpy as np
import pytest
import torch

from conftest import CONFIGS
from data.conftest import write_image
from simsearch.config import ConfigError, load
from simsearch.data.datasets import ImageDataset, collate_pairs_skip_bad, read_manifest
from simsearch.data.domains import check_domain_config, domains_from_manifest, domains_from_pattern
from simsearch.data.train_loader import build_train_dataset
from simsearch.data.transforms import (
    GALLERY,
    QUERY,
    DomainTransforms,
    build_gallery_domain_transform,
    build_query_domain_transform,
    build_transforms,
)

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _types(transform) -> set[type]:
    """Every albumentations step in a pipeline, OneOf's children included."""
    out: set[type] = set()
    for t in transform.pipeline.transforms:
        out.add(type(t))
        out |= {type(c) for c in getattr(t, "transforms", [])}
    return out


def _asymmetric_photo() -> np.ndarray:
    """A horizontal and vertical gradient plus a corner block: no flip or warp maps it onto itself."""
    y, x = np.mgrid[0:48, 0:48]
    image = np.stack([x * 5, y * 5, (x + y) * 2], axis=-1).astype(np.uint8)
    image[:10, :10] = 255
    return image


def test_query_pipeline_is_strong_and_gallery_pipeline_is_light() -> None:
    strong = _types(build_query_domain_transform(32, MEAN, STD))
    light = _types(build_gallery_domain_transform(32, MEAN, STD))
    assert {A.Affine, A.Perspective, A.GaussianBlur, A.MotionBlur, A.RandomResizedCrop, A.ColorJitter} <= strong
    geometric = {A.Affine, A.Perspective, A.RandomResizedCrop, A.GaussianBlur, A.MotionBlur}
    assert not geometric & light
    assert {A.HorizontalFlip, A.ColorJitter} <= light


def test_light_pipeline_changes_geometry_only_by_flips_and_strong_one_warps() -> None:
    image = _asymmetric_photo()
    reference = build_transforms(32, MEAN, STD, train=False)(image)  # the eval geometry
    mirrored = torch.flip(reference, dims=[2])
    light = build_gallery_domain_transform(32, MEAN, STD, color_jitter=0.0)
    strong = build_query_domain_transform(32, MEAN, STD, scale_min=1.0, hflip=0.0, color_jitter=0.0,
                                          blur_p=0.0, affine_p=1.0, perspective_p=1.0)
    flips = 0
    for seed in range(12):
        light.set_random_seed(seed)
        out = light(image)
        same, flipped = torch.allclose(out, reference, atol=1e-5), torch.allclose(out, mirrored, atol=1e-5)
        assert same or flipped, f"seed {seed}: the light pipeline changed more than a flip"
        flips += flipped
        strong.set_random_seed(seed)
        warped = strong(image)
        # no blur, no colour change, no flip: any difference from the reference is geometric
        assert (warped - reference).abs().mean() > 0.05, f"seed {seed}: no geometric change"
    assert 0 < flips < 12


def test_dataset_picks_the_pipeline_of_each_sample(tmp_path: Path) -> None:
    paths = [str(write_image(tmp_path / f"{i}.png", size=(8, 8))) for i in range(4)]
    transforms = DomainTransforms({QUERY: lambda im: torch.ones(1), GALLERY: lambda im: torch.zeros(1)})
    ds = ImageDataset([(p, 0) for p in paths], transforms, domains=[QUERY, GALLERY, GALLERY, QUERY])
    assert [ds[i][0].item() for i in range(4)] == [1.0, 0.0, 0.0, 1.0]
    with pytest.raises(ValueError, match="3 domains for 4 samples"):
        ImageDataset([(p, 0) for p in paths], transforms, domains=[QUERY] * 3)


def _manifest(tmp_path: Path, rows: list[tuple[str, str, str]], header: str = "path,label,domain") -> Path:
    for rel, _, _ in rows:
        write_image(tmp_path / rel, size=(40, 40))
    csv = tmp_path / "train.csv"
    csv.write_text(header + "\n" + "".join(f"{r},{label},{d}\n" for r, label, d in rows))
    return csv


ROWS = [("a/street_1.jpg", "a", "street"), ("a/shop_1.jpg", "a", "shop"), ("a/shop_2.jpg", "a", "shop"),
        ("b/street_1.jpg", "b", "street"), ("b/shop_1.jpg", "b", "shop"), ("b/shop_2.jpg", "b", "shop")]


def test_manifest_column_chooses_the_pipeline(tmp_path: Path) -> None:
    csv = _manifest(tmp_path, ROWS)
    cfg = load([CONFIGS / "domain_aug.yaml"], [f"data.train_csv={csv}", "data.domain_values=[street,shop]"])
    check_domain_config(cfg.data)
    samples, _ = read_manifest(csv)
    ds = build_train_dataset(cfg.data, samples, 32, MEAN, STD)
    assert ds.domains == [QUERY, GALLERY, GALLERY, QUERY, GALLERY, GALLERY]
    assert A.Perspective in _types(ds.transform_for(0)) and A.Perspective not in _types(ds.transform_for(1))
    assert all(ds[i][0].shape == (3, 32, 32) for i in range(len(ds)))


def test_folder_rule_chooses_the_domain(tmp_path: Path) -> None:
    rels = ("cls/street/1.jpg", "cls/shop/1.jpg", "street/x.jpg", "cls/streetwear.jpg")
    paths = [str(tmp_path / p) for p in rels]
    assert domains_from_pattern(paths, tmp_path, "*/street/*") == [QUERY, GALLERY, GALLERY, GALLERY]
    assert domains_from_pattern(paths, tmp_path, "street") == [QUERY, GALLERY, QUERY, GALLERY]
    assert domains_from_pattern(paths, tmp_path, "*/street*") == [QUERY, GALLERY, GALLERY, QUERY]


def test_missing_domain_column_names_the_column_and_the_csv(tmp_path: Path) -> None:
    csv = _manifest(tmp_path, [(r, label, "") for r, label, _ in ROWS], header="path,label,kind")
    cfg = load([CONFIGS / "domain_aug.yaml"], [f"data.train_csv={csv}"])
    with pytest.raises(ConfigError, match=f"{csv} has no column 'domain' \\(data.domain_column; found: "
                                          "path, label, kind\\)"):
        check_domain_config(cfg.data)
    with pytest.raises(ConfigError, match=f"{csv}: no column 'domain'"):
        domains_from_manifest(csv, "domain", ["query", "gallery"])


def test_unknown_domain_value_names_the_line_and_the_key(tmp_path: Path) -> None:
    csv = _manifest(tmp_path, ROWS)
    with pytest.raises(ValueError, match=r"train.csv: line 2: domain is 'street', expected 'query' or "
                                         r"'gallery' \(data.domain_values\)"):
        domains_from_manifest(csv, "domain", ["query", "gallery"])


def test_domain_rule_needed_for_folders(tmp_path: Path) -> None:
    cfg = load([CONFIGS / "domain_aug.yaml"], [f"data.train_dir={tmp_path}"])
    with pytest.raises(ConfigError, match="data.train_dir needs data.query_domain_pattern"):
        check_domain_config(cfg.data)
    check_domain_config(load([CONFIGS / "domain_aug.yaml"],
                             [f"data.train_dir={tmp_path}", 'data.query_domain_pattern="*/street/*"']).data)
    check_domain_config(load([], [f"data.train_dir={tmp_path}"]).data)  # off by default: nothing to check
    with pytest.raises(ConfigError, match="data.domain_values must be two different"):
        check_domain_config(load([CONFIGS / "domain_aug.yaml"], ["data.domain_values=[a]"]).data)


def test_pair_collate_drops_the_whole_pair_of_a_bad_image(tmp_path: Path) -> None:
    from simsearch.data.datasets import BadSample

    item = (torch.zeros(3, 2, 2), 0, 0)
    batch = [(torch.zeros(3, 2, 2), 0, 0), (torch.ones(3, 2, 2), 0, 1),
             BadSample(2, "x.jpg", "corrupt"), (torch.ones(3, 2, 2), 1, 3),
             (torch.zeros(3, 2, 2), 2, 4), item]
    images, labels, indices, bad = collate_pairs_skip_bad(batch)
    assert indices.tolist() == [0, 1, 4, 0] and bad.tolist() == [2] and images.shape[0] == 4
