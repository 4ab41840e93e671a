"""Result grids: see what a search returned, one row per query (query first, then the top k).

Each tile shows the image (letterboxed into ``thumb`` x ``thumb``) and a caption: rank and score,
then the file name. When relevance is known, a tile's border is green for a hit and red for a
miss, so a whole submission can be eyeballed at once. PNGs are written atomically and never
replace an existing file unless asked to.
"""
from __future__ import annotations

import io
import logging
import os
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, ImageOps

from simsearch.data import ImageLoadError, load_image
from simsearch.data.io import IMAGE_EXTENSIONS
from simsearch.inference.submission import read_ground_truth, read_submission
from simsearch.utils.fs import check_writable, write_bytes_atomic

__all__ = ["GREEN", "QUERY_BLUE", "RED", "check_grid_out", "grid_size", "result_grid", "submission_grid",
           "tile_box"]

log = logging.getLogger("simsearch.apps.grid")

GREEN, RED, QUERY_BLUE = (0, 170, 0), (210, 0, 0), (30, 90, 220)
BACKGROUND, PLACEHOLDER, NEUTRAL = (255, 255, 255), (225, 225, 225), (200, 200, 200)
PAD, BORDER, CAPTION_H = 4, 4, 30


@dataclass(frozen=True)
class Tile:
    """One cell: an image file (or a text for text queries), two caption lines, a border colour."""

    path: Path | None
    line1: str
    line2: str
    border: tuple[int, int, int]
    text: str | None = None


def _cell(thumb: int) -> tuple[int, int]:
    side = thumb + 2 * (BORDER + PAD)
    return side, side + CAPTION_H


def grid_size(n_rows: int, n_cols: int, thumb: int = 128) -> tuple[int, int]:
    """(width, height) in pixels of a grid of ``n_rows`` rows of ``n_cols`` tiles."""
    w, h = _cell(thumb)
    return n_cols * w, n_rows * h


def tile_box(row: int, col: int, thumb: int = 128) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1), inclusive, of the coloured border around the image of a tile."""
    w, h = _cell(thumb)
    x0, y0 = col * w + PAD, row * h + PAD
    side = thumb + 2 * BORDER
    return x0, y0, x0 + side - 1, y0 + side - 1


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    """Shorten ``text`` from the left ("...name.jpg") until it fits ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength("..." + text, font=font) > width:
        text = text[1:]
    return "..." + text


def _thumbnail(tile: Tile, thumb: int) -> Image.Image:
    canvas = Image.new("RGB", (thumb, thumb), PLACEHOLDER)
    if tile.text is not None:
        draw = ImageDraw.Draw(canvas)
        draw.multiline_text((4, 4), "\n".join(textwrap.wrap(tile.text, max(4, thumb // 7))[:8]),
                            fill=(0, 0, 0), font=ImageFont.load_default())
        return canvas
    try:
        img = ImageOps.contain(load_image(tile.path), (thumb, thumb))
    except ImageLoadError as exc:
        log.warning("grid: %s", exc)
        ImageDraw.Draw(canvas).text((4, thumb // 2 - 6), "unreadable" if tile.path.exists() else "missing",
                                    fill=(120, 0, 0), font=ImageFont.load_default())
        return canvas
    canvas.paste(img, ((thumb - img.width) // 2, (thumb - img.height) // 2))
    return canvas


def _render(rows: Sequence[Sequence[Tile]], thumb: int) -> Image.Image:
    """Draw the rows of tiles on one white canvas."""
    n_cols = max(len(r) for r in rows)
    image = Image.new("RGB", grid_size(len(rows), n_cols, thumb), BACKGROUND)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    for r, row in enumerate(rows):
        for c, tile in enumerate(row):
            x0, y0, x1, y1 = tile_box(r, c, thumb)
            draw.rectangle((x0, y0, x1, y1), fill=tile.border)
            image.paste(_thumbnail(tile, thumb), (x0 + BORDER, y0 + BORDER))
            width = x1 - x0 + 1
            draw.text((x0, y1 + 3), _fit(draw, tile.line1, font, width), fill=(0, 0, 0), font=font)
            draw.text((x0, y1 + 16), _fit(draw, tile.line2, font, width), fill=(60, 60, 60), font=font)
    return image


def check_grid_out(out_png: str | os.PathLike, force: bool, thumb: int) -> Path:
    """Refuse, before any search, a grid output that is not a writable .png path (or exists without ``force``)."""
    out = Path(out_png)
    if out.suffix.lower() != ".png":
        raise ValueError(f"{out}: a grid output must end in .png")
    check_writable(out, what="the grid PNG", force=force)
    if thumb < 16:
        raise ValueError(f"--thumb: must be at least 16 pixels, got {thumb}")
    return out


def _save(image: Image.Image, out: Path, force: bool) -> Path:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return write_bytes_atomic(out, buf.getvalue(), force=force)


def result_grid(query_path: str | os.PathLike | None, results: Sequence[tuple[str, float]],
                out_png: str | os.PathLike, relevant: set[str] | None = None, thumb: int = 128,
                force: bool = False, query_text: str | None = None) -> Path:
    """One row: the query (image, or ``query_text`` when ``query_path`` is None), then the results.

    ``relevant``: paths or file names that count as hits; a result is green when its path or
    its name is in it, red otherwise. Without it, borders are neutral grey.
    """
    out = check_grid_out(out_png, force, thumb)
    if query_path is None and not query_text:
        raise ValueError("result_grid needs a query image path or a query text")
    if query_path is None:
        first = Tile(None, "query (text)", "", QUERY_BLUE, text=query_text)
    else:
        first = Tile(Path(query_path), "query", Path(query_path).name, QUERY_BLUE)
    tiles = [first]
    for rank, (path, score) in enumerate(results, 1):
        colour = NEUTRAL
        if relevant is not None:
            colour = GREEN if (str(path) in relevant or Path(path).name in relevant) else RED
        tiles.append(Tile(Path(path), f"#{rank}  {score:.3f}", Path(path).name, colour))
    return _save(_render([tiles], thumb), out, force)


def _strip(name: str) -> str:
    """A name without its image extension: submissions may name files either way."""
    p = Path(name)
    return p.with_suffix("").as_posix() if p.suffix.lower() in IMAGE_EXTENSIONS else p.as_posix()


def _resolver(folder: Path):
    """name (with or without extension) -> the file under ``folder``, or None."""
    if not folder.is_dir():
        raise FileNotFoundError(f"folder {folder} does not exist")
    stems: dict[str, Path] = {}
    for f in sorted(folder.rglob("*")):
        if f.is_file():
            stems.setdefault(_strip(f.relative_to(folder).as_posix()), f)

    def resolve(name: str) -> Path | None:
        direct = folder / name
        return direct if direct.is_file() else stems.get(_strip(name))

    return resolve


def submission_grid(submission_path: str | os.PathLike, query_dir: str | os.PathLike,
                    gallery_dir: str | os.PathLike, out_png: str | os.PathLike, first_n: int = 8,
                    top_k: int = 5, ground_truth: str | os.PathLike | None = None, thumb: int = 128,
                    force: bool = False) -> Path:
    """Grid of a submission's first ``first_n`` queries (sorted by name), each with its top ``top_k``.

    With ``ground_truth``, hits are green and misses red; queries absent from it stay grey.
    """
    out = check_grid_out(out_png, force, thumb)
    if first_n < 1 or top_k < 1:
        raise ValueError(f"first_n and top_k must be >= 1, got {first_n} and {top_k}")
    sub = read_submission(submission_path)
    if not sub:
        raise ValueError(f"{submission_path}: the submission has no queries")
    gt = read_ground_truth(ground_truth) if ground_truth is not None else None
    find_query, find_gallery = _resolver(Path(query_dir)), _resolver(Path(gallery_dir))
    rows = []
    for q in sorted(sub)[:first_n]:
        qpath = find_query(q)
        row = [Tile(qpath if qpath is not None else Path(query_dir) / q, "query", q, QUERY_BLUE)]
        relevant = None if gt is None or q not in gt else {_strip(n) for n in gt[q]}
        for rank, name in enumerate(sub[q][:top_k], 1):
            path = find_gallery(name)
            colour, mark = NEUTRAL, ""
            if relevant is not None:
                hit = _strip(name) in relevant
                colour, mark = (GREEN, "  hit") if hit else (RED, "  miss")
            row.append(Tile(path if path is not None else Path(gallery_dir) / name, f"#{rank}{mark}", name,
                            colour))
        rows.append(row)
    log.info("grid of %d queries of %s -> %s", len(rows), submission_path, out)
    return _save(_render(rows, thumb), out, force)
