"""load_image: every odd-but-valid image becomes upright RGB; broken files raise with the path."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from simsearch.data.io import ImageLoadError, is_image_file, load_image, to_rgb


def _noisy_jpeg(path: Path, size: int = 64) -> Path:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path, quality=95)
    return path


# ----------------------------------------------------------------------------- bad input


def _assert_load_error(path: Path) -> ImageLoadError:
    with pytest.raises(ImageLoadError) as info:
        load_image(path)
    assert str(path) in str(info.value)
    assert info.value.path == str(path)
    return info.value


def test_missing_file(tmp_path: Path) -> None:
    err = _assert_load_error(tmp_path / "nope.jpg")
    assert "does not exist" in err.reason


def test_folder_instead_of_file(tmp_path: Path) -> None:
    (tmp_path / "dir.jpg").mkdir()
    assert "folder" in _assert_load_error(tmp_path / "dir.jpg").reason


def test_text_file_named_jpg(tmp_path: Path) -> None:
    path = tmp_path / "readme.jpg"
    path.write_text("this is not a JPEG\n")
    assert "not a recognised image" in _assert_load_error(path).reason


def test_random_bytes_named_jpg(tmp_path: Path) -> None:
    path = tmp_path / "noise.jpg"
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    _assert_load_error(path)


def test_corrupt_jpeg_body(tmp_path: Path) -> None:
    """A valid JPEG header followed by garbage (a real header makes PIL try to decode)."""
    good = _noisy_jpeg(tmp_path / "good.jpg").read_bytes()
    path = tmp_path / "corrupt.jpg"
    path.write_bytes(good[:200] + b"\x00" * 50 + b"\xff\xd9")
    _assert_load_error(path)


def test_truncated_jpeg(tmp_path: Path) -> None:
    good = _noisy_jpeg(tmp_path / "good.jpg").read_bytes()
    path = tmp_path / "half.jpg"
    path.write_bytes(good[: len(good) // 2])
    assert load_image(tmp_path / "good.jpg").size == (64, 64)  # the full file is fine
    assert "truncated" in _assert_load_error(path).reason


def test_error_is_value_error_and_survives_pickling() -> None:
    err = ImageLoadError("/x/y.jpg", "broken")
    assert isinstance(err, ValueError)
    back = pickle.loads(pickle.dumps(err))
    assert (back.path, back.reason, str(back)) == ("/x/y.jpg", "broken", str(err))


# ----------------------------------------------------------------------------- colour modes


def test_cmyk_jpeg_to_rgb(tmp_path: Path) -> None:
    """CMYK (0,255,255,0) is red and (255,0,255,0) is green."""
    img = Image.new("CMYK", (32, 16), (0, 255, 255, 0))
    img.paste((255, 0, 255, 0), (16, 0, 32, 16))
    img.save(tmp_path / "cmyk.jpg", quality=95)
    out = load_image(tmp_path / "cmyk.jpg")
    assert out.mode == "RGB"
    np.testing.assert_allclose(out.getpixel((8, 8)), (255, 0, 0), atol=20)
    np.testing.assert_allclose(out.getpixel((24, 8)), (0, 255, 0), atol=20)


def test_rgba_png_composited_on_white(tmp_path: Path) -> None:
    img = Image.new("RGBA", (3, 1))
    img.putdata([(0, 0, 0, 0), (255, 0, 0, 255), (0, 0, 255, 128)])
    img.save(tmp_path / "logo.png")
    out = load_image(tmp_path / "logo.png")
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == (255, 255, 255)  # transparent black -> white, not black
    assert out.getpixel((1, 0)) == (255, 0, 0)  # opaque red stays red
    # half-transparent blue over white: 255 * (1 - 128/255) = 127 for red and green
    np.testing.assert_allclose(out.getpixel((2, 0)), (127, 127, 255), atol=1)


def test_la_and_palette_transparency_on_white(tmp_path: Path) -> None:
    Image.new("LA", (2, 2), (0, 0)).save(tmp_path / "la.png")
    assert load_image(tmp_path / "la.png").getpixel((1, 1)) == (255, 255, 255)
    pal = Image.new("P", (2, 1))
    pal.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    pal.putdata([0, 1])
    pal.save(tmp_path / "pal.png", transparency=0)
    out = load_image(tmp_path / "pal.png")
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((1, 0)) == (0, 255, 0)


def test_greyscale_png_has_three_equal_channels(tmp_path: Path) -> None:
    Image.new("L", (4, 3), 77).save(tmp_path / "grey.png")
    out = load_image(tmp_path / "grey.png")
    assert out.mode == "RGB" and out.size == (4, 3)
    assert (np.asarray(out) == 77).all()


def test_16bit_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.array([[65535, 32768], [0, 255]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode == "I;16"
    out = np.asarray(load_image(tmp_path / "deep.png"))
    # v * 255 / 65535: 65535 -> 255, 32768 -> 127.5 -> 128, 255 -> 0.99 -> 1
    np.testing.assert_array_equal(out[..., 0], [[255, 128], [0, 1]])
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()


def test_32bit_integer_mode_uses_16bit_range() -> None:
    img = Image.fromarray(np.array([[65535, 70000, -5]], dtype=np.int32))
    assert img.mode == "I"
    assert np.asarray(to_rgb(img))[0, :, 0].tolist() == [255, 255, 0]


def test_exif_orientation_applied(tmp_path: Path) -> None:
    """Orientation 6 = rotate 90 degrees clockwise to display.

    Stored 40x20 with a red top-left 10x10 block on blue; displayed 20x40 with the
    block in the top-right corner.
    """
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6
    img.save(tmp_path / "phone.jpg", exif=exif, quality=95)
    out = load_image(tmp_path / "phone.jpg")
    assert out.size == (20, 40)
    np.testing.assert_allclose(out.getpixel((15, 5)), (255, 0, 0), atol=30)  # top-right
    np.testing.assert_allclose(out.getpixel((5, 5)), (0, 0, 255), atol=30)  # top-left
    np.testing.assert_allclose(out.getpixel((15, 35)), (0, 0, 255), atol=30)


def test_is_image_file() -> None:
    assert is_image_file("a/B.JPG") and is_image_file("x.webp")
    assert not is_image_file("a/._B.jpg") and not is_image_file("notes.txt")
