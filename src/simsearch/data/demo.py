"""A small instance-level retrieval competition built offline from scikit-image's bundled photos.

Why: ``make demo`` must run the whole train -> infer -> score loop on a fresh machine with no
network. scikit-image (an ``offline`` extra) ships real photographs; cutting each into
overlapping regions gives "products", and random crops / rotations / colour jitter of a region
give several "photos of the product". Items are split between training and test (as in
DeepFashion In-shop), so the test set asks for unseen instances, in the same folder layout as
``../shared/data/caltech101``.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import io
import json
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from simsearch.utils.fs import atomic_folder

__all__ = ["PHOTOS", "ViewStyle", "build_demo_competition", "skimage_data_dir"]

# Real photographs only. Left out: synthetic images (chessboard, phantom, logo, text, color
# wheel, horse silhouette), near-empty ones (cell, clock_motion, microaneurysms), the stereo
# twin motorcycle_right (its regions would duplicate motorcycle_left's items) and
# lfw_subset.npy (25x25 px faces: too small to be useful at 160 px).
PHOTOS: tuple[str, ...] = (
    "astronaut.png", "brick.png", "camera.png", "chelsea.png", "coffee.png", "coins.png",
    "grass.png", "gravel.png", "hubble_deep_field.jpg", "ihc.png", "moon.png",
    "motorcycle_left.png", "page.png", "retina.jpg", "rocket.jpg",
)

TRAIN_FRACTION = 0.6
LONG_SIDE = 160
MIN_REGION_STD = 8.0  # grey-level std (0-255) below which a region is too uniform to recognise
REF_SIDE_CAP = 512  # a photo's reference side: its short side, capped here
EXTRA_CELL_RATIO = 1.4  # an axis this much longer than the reference side gets one more cell
MAX_REGION_SIDE = 2 * LONG_SIDE  # photos are shrunk so no region is larger (speed; views still downscale)


@dataclass(frozen=True)
class _Item:
    photo: str
    box: tuple[int, int, int, int]  # left, top, right, bottom in the photo


def skimage_data_dir() -> Path:
    """Folder of scikit-image's bundled images, found without importing skimage (slow, lazy)."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError("scikit-image is needed for the demo data: pip install scikit-image")
    return Path(spec.origin).parent / "data"


def _load_rgb(path: Path) -> Image.Image:
    """RGB copy of a photo; greyscale and RGBA photos become plain 3-channel RGB."""
    with Image.open(path) as im:
        return im.convert("RGB")


def _axis_cells(side: int, ref: int, grid: int) -> int:
    return grid + (1 if side >= EXTRA_CELL_RATIO * ref else 0)


def _regions(width: int, height: int, grid: int) -> list[tuple[int, int, int, int]]:
    """Overlapping boxes: ``n`` cells per axis, each ``1.2/n`` of the side (60% for n=2).

    Roughly square cells: long and large photos get one more cell along such an axis.
    """
    ref = min(width, height, REF_SIDE_CAP)
    nx, ny = _axis_cells(width, ref, grid), _axis_cells(height, ref, grid)

    def spans(side: int, n: int) -> list[tuple[int, int]]:
        size = round(side * min(1.0, 1.2 / n))
        starts = [0] if n == 1 else [round(i * (side - size) / (n - 1)) for i in range(n)]
        return [(s, s + size) for s in starts]

    return [(x0, y0, x1, y1) for (y0, y1) in spans(height, ny) for (x0, x1) in spans(width, nx)]


def _shrunk(img: Image.Image, boxes: list[tuple[int, int, int, int]]
            ) -> tuple[Image.Image, list[tuple[int, int, int, int]]]:
    """Photo and boxes downscaled so the largest box side is at most MAX_REGION_SIDE px."""
    largest = max(max(x1 - x0, y1 - y0) for x0, y0, x1, y1 in boxes)
    if largest <= MAX_REGION_SIDE:
        return img, boxes
    s = MAX_REGION_SIDE / largest
    small = img.resize((round(img.width * s), round(img.height * s)), resample=Image.Resampling.LANCZOS)
    fit = [(round(x0 * s), round(y0 * s), min(small.width, round(x1 * s)), min(small.height, round(y1 * s)))
           for x0, y0, x1, y1 in boxes]
    return small, fit


def _collect_items(data_dir: Path, grid: int) -> tuple[list[_Item], dict[str, Image.Image], int]:
    """All recognisable regions of all photos, plus the loaded photos and the skipped count."""
    items: list[_Item] = []
    photos: dict[str, Image.Image] = {}
    skipped = 0
    for name in PHOTOS:
        img = _load_rgb(data_dir / name)
        img, boxes = _shrunk(img, _regions(img.width, img.height, grid))
        photos[name] = img
        grey = np.asarray(img.convert("L"), dtype=np.float32)
        for box in boxes:
            x0, y0, x1, y1 = box
            if float(grey[y0:y1, x0:x1].std()) < MIN_REGION_STD:
                skipped += 1
                continue
            items.append(_Item(name, box))
    return items, photos, skipped


def _padded(img: Image.Image) -> tuple[Image.Image, int]:
    """Reflect-padded photo so rotated crops near a border never show black corners."""
    pad = max(img.width, img.height) // 4
    arr = np.pad(np.asarray(img), ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
    return Image.fromarray(arr), pad


@dataclass(frozen=True)
class ViewStyle:
    """How different the views of one item are: the smallest crop area and the largest rotation."""

    min_area: float = 0.5
    max_rotation: float = 15.0


def _render_view(padded: Image.Image, pad: int, box: tuple[int, int, int, int],
                 rng: np.random.Generator, style: ViewStyle = ViewStyle()) -> bytes:
    """One "photo of the item": crop, rotation, flip, colour jitter, blur, resize, JPEG."""
    x0, y0, x1, y1 = box
    rw, rh = x1 - x0, y1 - y0
    area = rng.uniform(style.min_area, 1.0) * rw * rh
    aspect = float(np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3))))
    w = min(rw, max(8, round(np.sqrt(area * aspect))))
    h = min(rh, max(8, round(np.sqrt(area / aspect))))
    left = x0 + pad + int(rng.integers(0, rw - w + 1))
    top = y0 + pad + int(rng.integers(0, rh - h + 1))
    angle = float(rng.uniform(-style.max_rotation, style.max_rotation))
    # Cut a margin-wide patch, shrink it to the output scale (cheap), rotate it about the crop
    # centre, then cut the crop: the margin fills the rotated corners (no black triangles).
    m = round(0.3 * max(w, h))
    patch = padded.crop((left - m, top - m, left + w + m, top + h + m))
    scale = LONG_SIDE / max(w, h)
    out_w, out_h, out_m = max(1, round(w * scale)), max(1, round(h * scale)), round(m * scale)
    patch = patch.resize((out_w + 2 * out_m, out_h + 2 * out_m), resample=Image.Resampling.BILINEAR)
    view = patch.rotate(angle, resample=Image.Resampling.BILINEAR)
    view = view.crop((out_m, out_m, out_m + out_w, out_m + out_h))
    if rng.random() < 0.3:
        view = view.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    view = ImageEnhance.Brightness(view).enhance(float(rng.uniform(0.75, 1.25)))
    view = ImageEnhance.Contrast(view).enhance(float(rng.uniform(0.75, 1.25)))
    view = ImageEnhance.Color(view).enhance(float(rng.uniform(0.7, 1.3)))
    if rng.random() < 0.3:
        view = view.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.3, 1.0))))
    buf = io.BytesIO()
    view.save(buf, format="JPEG", quality=int(rng.integers(85, 96)))
    return buf.getvalue()


def _render_item_views(padded: Image.Image, pad: int, item: _Item, n: int,
                       rng: np.random.Generator, seen: set[str], style: ViewStyle) -> list[bytes]:
    """``n`` views whose bytes are new to the whole competition (redrawn on a hash collision)."""
    views: list[bytes] = []
    while len(views) < n:
        data = _render_view(padded, pad, item.box, rng, style)
        digest = hashlib.sha256(data).hexdigest()
        if digest not in seen:
            seen.add(digest)
            views.append(data)
    return views


def _render_all(items: list[_Item], photos: dict[str, Image.Image], views_per_item: int,
                seed: int, style: ViewStyle) -> list[list[bytes]]:
    """Views of every item; each item has its own seeded stream, so output is order-stable."""
    padded = {name: _padded(img) for name, img in photos.items()}
    seen: set[str] = set()
    out = []
    for idx, item in enumerate(items):
        rng = np.random.default_rng([seed, idx])
        pimg, pad = padded[item.photo]
        out.append(_render_item_views(pimg, pad, item, views_per_item, rng, seen, style))
    return out


def _write_split(root: Path, views: list[list[bytes]], train_idx: list[int], test_idx: list[int],
                 rng: np.random.Generator) -> dict[str, int]:
    """training/item_XXX/, test/query, test/gallery and test/ground_truth.json under ``root``."""
    n_train_images = 0
    for k, idx in enumerate(train_idx):
        d = root / "training" / f"item_{k:03d}"
        d.mkdir(parents=True)
        for j, data in enumerate(views[idx]):
            (d / f"image_{j:04d}.jpg").write_bytes(data)
            n_train_images += 1
    queries: list[tuple[int, bytes]] = []
    gallery: list[tuple[int, bytes]] = []
    for idx in test_idx:
        q = int(rng.integers(len(views[idx])))
        queries.append((idx, views[idx][q]))
        gallery.extend((idx, data) for j, data in enumerate(views[idx]) if j != q)
    if not test_idx:
        return {"train_images": n_train_images}
    return {"train_images": n_train_images, **_write_test(root, queries, gallery, rng)}


def _write_test(root: Path, queries: list[tuple[int, bytes]], gallery: list[tuple[int, bytes]],
                rng: np.random.Generator) -> dict[str, int]:
    """test/query, test/gallery (shuffled, neutral names) and test/ground_truth.json (by item)."""
    qdir, gdir = root / "test" / "query", root / "test" / "gallery"
    qdir.mkdir(parents=True)
    gdir.mkdir(parents=True)
    by_item: dict[int, list[str]] = {}
    for i, pos in enumerate(rng.permutation(len(gallery))):
        idx, data = gallery[int(pos)]
        name = f"g_{i:05d}.jpg"
        (gdir / name).write_bytes(data)
        by_item.setdefault(idx, []).append(name)
    truth: dict[str, list[str]] = {}
    for i, pos in enumerate(rng.permutation(len(queries))):
        idx, data = queries[int(pos)]
        name = f"q_{i:05d}.jpg"
        (qdir / name).write_bytes(data)
        truth[name] = sorted(by_item[idx])
    (root / "test" / "ground_truth.json").write_text(json.dumps(truth, indent=1, sort_keys=True) + "\n")
    return {"queries": len(queries), "gallery": len(gallery)}


def _write_split_seen(root: Path, views: list[list[bytes]], test_idx: list[int], train_views: int,
                      rng: np.random.Generator) -> dict[str, int]:
    """Seen-item protocol: every item trains on its first ``train_views`` views; each test item's
    other views give one query and the gallery (as a competition with a known catalogue)."""
    seen_views = [v[:train_views] for v in views]
    rest = [v[train_views:] for v in views]
    counts = _write_split(root, seen_views, list(range(len(views))), [], rng)
    queries = [(idx, rest[idx][0]) for idx in test_idx]
    gallery = [(idx, data) for idx in test_idx for data in rest[idx][1:]]
    counts.update(_write_test(root, queries, gallery, rng))
    return counts


def _wrapped(names: tuple[str, ...]) -> str:
    """Back-quoted, comma-separated names, wrapped for the README."""
    return textwrap.fill(", ".join(f"`{n}`" for n in names), width=96, subsequent_indent="  ")


def _readme(counts: dict[str, int], seed: int, views_per_item: int, crop_grid: int, skipped: int,
            disk_mb: float, style: ViewStyle, seen_items: int = 0) -> str:
    """The competition's README, in the style of the caltech101 one; no timestamps (determinism)."""
    version = importlib.metadata.version("scikit-image")
    return f"""# skimage_items — instance-level image-retrieval demo (real photos, offline)

Built by `simsearch.data.demo.build_demo_competition` (seed {seed}, views_per_item {views_per_item},
crop_grid {crop_grid}, min_area {style.min_area:g}, max_rotation {style.max_rotation:g}); `make demo`
builds it without network access.

## Source
- The real photographs bundled with **scikit-image {version}** (`skimage/data/`):
  {_wrapped(PHOTOS)}.
- Left out: synthetic images (chessboard, phantom, logo, text, colour wheel, horse silhouette),
  near-empty ones (cell, clock_motion, microaneurysms), `motorcycle_right.png` (stereo twin of
  `motorcycle_left.png`) and `lfw_subset.npy` (25x25 px faces).
- License: per the `skimage.data` docstrings, the photos are CC0 or public domain ("no known
  copyright restrictions"), except `moon.png`, `page.png` and `motorcycle_left.png` (Middlebury
  stereo data), for which no license is stated; attribute scikit-image and the photographers.

## Protocol (instance-level, like DeepFashion In-shop)
- Items ("products"): each photo (converted to RGB) is cut into overlapping regions,
  {crop_grid} per axis, one more along an axis at least {EXTRA_CELL_RATIO}x the photo's reference side
  (short side, capped at {REF_SIDE_CAP} px); each region spans 1.2/n of the side (60% for n=2),
  so neighbouring items share content. Regions with grey-level std < {MIN_REGION_STD:g} are dropped
  ({skipped} dropped).
- Views ("photos of the item"), {views_per_item} per item: random resized crop inside the region
  (area {style.min_area:g}-1, aspect 3/4-4/3), rotation of up to +-{style.max_rotation:g} degrees
  (reflect-padded, no black corners),
  horizontal flip (p=0.3), brightness/contrast/saturation jitter, Gaussian blur (p=0.3),
  longer side resized to {LONG_SIDE} px, JPEG quality 85-95. Deterministic for a given seed.
- {_split_text(seen_items, views_per_item)}
  No image bytes are shared between training, query and gallery (sha256-checked).
  Training and test items cut from the same photo may overlap at region borders.
- Query/gallery files are globally shuffled with neutral names (`q_NNNNN.jpg`, `g_NNNNN.jpg`);
  `test/ground_truth.json` maps each query to all gallery views of its item.

## Counts
| split | items | images |
|---|---|---|
| training | {counts["train_items"]} | {counts["train_images"]} |
| test/query | {counts["test_items"]} | {counts["queries"]} |
| test/gallery | {counts["test_items"]} | {counts["gallery"]} |
| total | {counts["items"]} | {counts["train_images"] + counts["queries"] + counts["gallery"]} |

- Relevant gallery images per query: {views_per_item - 1 - seen_items}.
- Image bytes: {disk_mb:.1f} MB.

## Caveats
- Tiny by design: it exists to exercise the pipeline offline, not to rank models.
- Some photos are textures (brick, grass, gravel) or greyscale; their regions are hard to tell apart.
"""


def _split_text(seen_items: int, views_per_item: int) -> str:
    if seen_items:
        return (f"Seen items (a known catalogue): every item -> `training/item_XXX/` with {seen_items} of its "
                f"views; for {100 - round(TRAIN_FRACTION * 100)}% of the items (seeded) one other view -> "
                f"`test/query/`, the remaining {views_per_item - seen_items - 1} -> `test/gallery/`.")
    return (f"Split by item (seeded): {round(TRAIN_FRACTION * 100)}% of the items -> `training/item_XXX/`\n"
            "  (all their views); for each other item one view -> `test/query/`, the rest -> `test/gallery/`.")


def _check_target(out: Path, force: bool) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise FileExistsError(f"{out} exists and is not empty (pass force=True to replace it)")


def build_demo_competition(out_dir: str | Path, seed: int = 0, views_per_item: int = 6,
                           crop_grid: int = 2, force: bool = False, style: ViewStyle = ViewStyle(),
                           seen_items: int = 0) -> dict:
    """Build the competition under ``out_dir`` (via a temporary sibling, renamed at the end).

    Returns the counts (items, train_items, test_items, train_images, queries, gallery) and the
    paths (out_dir, training_dir, query_dir, gallery_dir, ground_truth). Raises FileExistsError when
    ``out_dir`` is non-empty and ``force`` is false.

    ``seen_items`` > 0 switches to the seen-item protocol (a known catalogue, like caltech101's seen
    classes): every item trains on ``seen_items`` of its views; the test items' other views are
    their query and gallery images.
    """
    if seen_items and not 0 < seen_items <= views_per_item - 2:
        raise ValueError(f"seen_items={seen_items} must leave at least 2 views per item for the test "
                         f"(views_per_item={views_per_item})")
    if views_per_item < 2:
        raise ValueError("views_per_item must be >= 2 (a query needs at least one gallery view)")
    if crop_grid < 1:
        raise ValueError("crop_grid must be >= 1")
    out = Path(out_dir)
    _check_target(out, force)
    items, photos, skipped = _collect_items(skimage_data_dir(), crop_grid)
    if len(items) < 2:
        raise RuntimeError("fewer than 2 usable regions in scikit-image's photos")
    if not (0.0 < style.min_area <= 1.0 and 0.0 <= style.max_rotation <= 180.0):
        raise ValueError(f"style: min_area must be in (0, 1] and max_rotation in [0, 180], got {style}")
    views = _render_all(items, photos, views_per_item, seed, style)
    rng = np.random.default_rng(seed)
    order = [int(i) for i in rng.permutation(len(items))]
    n_train = min(len(items) - 1, max(1, round(TRAIN_FRACTION * len(items))))
    with atomic_folder(out) as tmp:
        if seen_items:
            counts = {"items": len(items), "train_items": len(items), "test_items": len(items) - n_train}
            counts.update(_write_split_seen(tmp, views, order[n_train:], seen_items, rng))
        else:
            counts = {"items": len(items), "train_items": n_train, "test_items": len(items) - n_train}
            counts.update(_write_split(tmp, views, order[:n_train], order[n_train:], rng))
        disk_mb = sum(len(v) for vs in views for v in vs) / 1e6
        (tmp / "README.md").write_text(_readme(counts, seed, views_per_item, crop_grid, skipped, disk_mb, style,
                                                 seen_items))
    paths = {"out_dir": out, "training_dir": out / "training", "query_dir": out / "test" / "query",
             "gallery_dir": out / "test" / "gallery", "ground_truth": out / "test" / "ground_truth.json"}
    return {**counts, **paths}
