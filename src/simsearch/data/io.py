"""Robust image loading: every readable image becomes an upright 8-bit RGB PIL image.

Real retrieval datasets mix JPEG/PNG/WebP files with CMYK scans, transparent logos,
16-bit greyscale PNGs and phone photos rotated only through EXIF. Training and
inference must see all of them the same way, and must fail loudly (with the path)
on files that are not images at all.

Truncated files: PIL's global ``ImageFile.LOAD_TRUNCATED_IMAGES`` is left at its
default (False) and :func:`load_image` forces a full decode, so a cut-off JPEG raises
:class:`ImageLoadError` instead of silently coming back half grey.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

logger = logging.getLogger("simsearch.data")

#: File name extensions (lower case) treated as images when scanning folders.
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
)

_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}


class ImageLoadError(ValueError):
    """An image file could not be read; carries the path so the caller can report it."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot load image {self.path}: {reason}")

    def __reduce__(self):  # keep (path, reason) when pickled across worker processes
        return (type(self), (self.path, self.reason))


def is_image_file(path: str | os.PathLike[str]) -> bool:
    """True for non-hidden files whose extension is in IMAGE_EXTENSIONS (case-insensitive).

    Hidden names are skipped because macOS leaves '._photo.jpg' resource forks that
    carry an image extension but hold no image.
    """
    name = os.path.basename(os.fspath(path))
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def load_image(path: str | os.PathLike[str]) -> Image.Image:
    """Read ``path`` fully and return an upright RGB image.

    Raises:
        ImageLoadError: missing file, not an image, corrupt or truncated data,
            or a colour mode that cannot be converted to RGB.
    """
    path = Path(path)
    if not path.is_file():
        reason = "is a folder, not a file" if path.is_dir() else "file does not exist"
        raise ImageLoadError(path, reason)
    try:
        with Image.open(path) as img:
            img.load()  # full decode: truncation and corrupt data surface here
            img = _upright(img, path)
            return to_rgb(img)
    except ImageLoadError:
        raise
    except Image.UnidentifiedImageError:
        raise ImageLoadError(path, "not a recognised image format") from None
    except Exception as exc:  # decoders raise OSError, SyntaxError, struct.error, ...
        raise ImageLoadError(path, f"{type(exc).__name__}: {exc}") from exc


def _upright(img: Image.Image, path: Path) -> Image.Image:
    """Apply the EXIF Orientation tag; a broken EXIF block only costs the rotation."""
    try:
        return ImageOps.exif_transpose(img)
    except Exception as exc:  # malformed EXIF must not lose the image
        logger.warning("ignoring unreadable EXIF orientation of %s: %s", path, exc)
        return img.copy()


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB (raises ValueError for unconvertible modes).

    Transparent pixels are composited on white (a logo on a transparent background
    looks like it does in a browser, not like a black blob); 16-bit data is scaled
    (65535 -> 255) rather than clipped.
    """
    if img.mode == "RGB":
        return img.copy()
    if img.mode in _SIXTEEN_BIT_MODES:
        return _sixteen_bit_to_rgb(img)
    if img.mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    try:
        return img.convert("RGB")
    except (ValueError, OSError) as exc:
        raise ValueError(f"cannot convert colour mode {img.mode} to RGB ({exc})") from exc


def _sixteen_bit_to_rgb(img: Image.Image) -> Image.Image:
    """Scale 16-bit greyscale (modes I;16*, and I as PNG decodes it) to 0..255."""
    values = np.asarray(img, dtype=np.float64)
    values = np.clip(values, 0.0, 65535.0) * (255.0 / 65535.0)
    grey = np.rint(values).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(np.stack([grey] * 3, axis=-1)))
