"""Shared helpers for the data tests: tiny images written with PIL."""
from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image


def write_image(path: Path, color: tuple[int, int, int] = (200, 30, 30),
                size: tuple[int, int] = (12, 10)) -> Path:
    """Write a solid RGB image (format from the extension), creating parent folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


@pytest.fixture
def class_tree(tmp_path: Path) -> Path:
    """ROOT/<class>/<image>: cat 3 images, dog 2, owl 1 (plus noise that must be ignored)."""
    root = tmp_path / "train"
    for name, n in {"cat": 3, "dog": 2, "owl": 1}.items():
        for i in range(n):
            write_image(root / name / f"{i}.jpg", color=(40 * i, 100, 50))
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / "cat" / "._0.jpg").write_bytes(b"macOS resource fork")
    return root
