"""Shared fixtures: tiny generated image folders, the repo's configs, CPU only."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


def make_class_folder(root: Path, n_classes: int = 6, per_class: int = 6, size: int = 40,
                      seed: int = 0) -> Path:
    """Each class is a distinct colour pattern plus noise, so a model can learn it quickly."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in range(n_classes):
        base = rng.integers(0, 256, size=(4, 4, 3))
        d = root / f"class_{c:02d}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            big = np.kron(base, np.ones((size // 4, size // 4, 1)))
            img = np.clip(big + rng.normal(0, 25, big.shape), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(d / f"img_{i:02d}.jpg", quality=95)
    return root


@pytest.fixture()
def image_folder(tmp_path: Path) -> Path:
    return make_class_folder(tmp_path / "train")


def train_tiny_checkpoint(root: Path, n_classes: int) -> Path:
    """One epoch of configs/tiny_test.yaml on a generated folder; returns the best/ checkpoint."""
    from tools.train import main as train_main

    train = make_class_folder(root / "train", n_classes=n_classes, per_class=6, seed=0)
    assert train_main(["--config", str(CONFIGS / "tiny_test.yaml"), f"data.train_dir={train}",
                       f"train.output_dir={root / 'runs'}", "train.epochs=1"]) == 0
    return root / "runs" / "tiny_test" / "best"
