"""A Gradio demo over an index folder: upload an image, paste its URL or type a text, see the top k.

The search logic lives in :class:`SearchService`, which knows nothing of Gradio, so it is tested
without a browser; :func:`build_app` lays the page out and :func:`launch_app` serves it.

What the app lets a visitor do, and no more:

- uploads and fetched URLs are capped in bytes (``max_upload_mb``; Gradio also refuses larger
  uploads before they reach Python) and in pixels (``max_pixels``, checked from the image
  header before anything is decoded, with PIL's decompression-bomb warning made an error);
- URLs go through :mod:`simsearch.apps.url_fetch` (http/https only, public addresses only unless
  ``allow_private_urls``, a timeout, redirects re-checked);
- result images are served only from inside the index's images folder: every result path is
  checked by :meth:`SearchService.served_path`, and Gradio's ``allowed_paths`` holds only that
  folder;
- it binds to 127.0.0.1 unless told otherwise, and sends no analytics
  (``GRADIO_ANALYTICS_ENABLED=False`` is set in ``simsearch/__init__.py``) and loads no web
  fonts, so it works offline.
"""
from __future__ import annotations

import logging
import re
import tempfile
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from simsearch.apps.url_fetch import fetch_url
from simsearch.retrieval.store import Hit, LoadedIndex, require_text_search
from simsearch.retrieval.vectordb import DbLocation, VectorIndex, index_size, open_index, search_index, search_text
from simsearch.utils.errors import USER_ERRORS, InputFileError

__all__ = ["AppSettings", "SearchService", "build_app", "check_image_file", "launch_app", "md_escape"]

log = logging.getLogger("simsearch.apps.app")

#: What a search returns to the page: gallery items (image path, caption) and a status line (Markdown).
Result = tuple[list[tuple[str, str]], str]

# System fonts only: Gradio's default theme pulls its fonts from Google, which an offline demo cannot reach.
_FONTS = ["ui-sans-serif", "system-ui", "sans-serif"]
_MONO_FONTS = ["ui-monospace", "monospace"]
_MD_SPECIAL = re.compile(r"[\\`*_{}\[\]()<>#|!~]")


@dataclass(frozen=True)
class AppSettings:
    """The app's limits; each is a command-line option of ``simsearch app``."""

    top_k: int = 5
    max_upload_mb: float = 10.0
    allow_private_urls: bool = False
    url_timeout: float = 10.0
    max_pixels: int = 50_000_000

    def __post_init__(self) -> None:
        for name in ("top_k", "max_upload_mb", "url_timeout", "max_pixels"):
            if not getattr(self, name) > 0:
                raise ValueError(f"--{name.replace('_', '-')} must be > 0, got {getattr(self, name)}")

    @property
    def max_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)


def md_escape(text: str) -> str:
    """``text`` shown literally in Markdown: file names, URLs and messages may hold ``_ * | [ ]``."""
    return _MD_SPECIAL.sub(r"\\\g<0>", text)


def check_image_file(path: str | Path, max_bytes: int, max_pixels: int, name: str | None = None) -> None:
    """Refuse a query image that is missing, too large in bytes or pixels, or not an image, before it
    is decoded; messages start with ``name`` (default: the file's name, which Gradio keeps for an upload).

    Only the header is read; PIL's ``DecompressionBombWarning`` (an image past
    ``Image.MAX_IMAGE_PIXELS``) is raised as an error rather than printed.
    """
    p = Path(path)
    name = name or p.name
    if p.is_dir():
        raise ValueError(f"{name}: is a folder, not an image file")
    if not p.is_file():
        raise ValueError(f"{name}: no such file (the upload did not arrive?)")
    size = p.stat().st_size
    if size == 0:
        raise ValueError(f"{name}: the file is empty, not an image")
    if size > max_bytes:
        raise ValueError(f"{name}: the image is {size / 2**20:.1f} MB, over the {max_bytes / 2**20:g} MB "
                         "upload cap")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(p) as img:
                width, height = img.size
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise ValueError(f"{name}: the image is refused as a possible decompression bomb: {exc}") from None
    except (Image.UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ValueError(f"{name}: the file is not a readable image ({type(exc).__name__}: {exc})") from None
    if width * height > max_pixels:
        raise ValueError(f"{name}: the image is {width}x{height} = {width * height} pixels, over the cap of "
                         f"{max_pixels} pixels")


class SearchService:
    """Image, URL and text search over one index, returning what the page shows."""

    def __init__(self, index: str | Path | DbLocation | LoadedIndex | VectorIndex,
                 settings: AppSettings | None = None, checkpoint: str | Path | None = None) -> None:
        self.index = open_index(index)  # an index folder, or a vector-database collection
        self.settings = settings or AppSettings()
        self.images_dir = self.index.images_dir.resolve()
        self.index.embedding_model(checkpoint)  # load now: a wrong or missing checkpoint fails at start
        try:
            require_text_search(self.index.manifest, self.index.folder)
            self.text_search_error: str | None = None
        except ValueError as exc:
            self.text_search_error = str(exc)
        self._lock = threading.Lock()  # Gradio runs events on threads; one model, one query at a time

    def served_path(self, path: str | Path) -> Path:
        """``path`` resolved, if it is a file inside the images folder; the only files the app shows."""
        p = Path(path).resolve()
        if not p.is_relative_to(self.images_dir):
            raise ValueError(f"refusing to serve {path}: it is outside the index's images folder "
                             f"{self.images_dir}")
        if not p.is_file():
            raise FileNotFoundError(f"refusing to serve {path}: no such file")
        return p

    def _present(self, hits: list[Hit], what: str) -> Result:
        """Gallery items captioned "rank. name · score", and a status line with the same as a table."""
        items, rows, hidden = [], [], 0
        for rank, (path, score) in enumerate(hits, 1):
            try:
                p = self.served_path(path)
            except (ValueError, FileNotFoundError):
                hidden += 1
                continue
            name = p.relative_to(self.images_dir).as_posix()
            items.append((str(p), f"{rank}. {name} · {score:.3f}"))
            rows.append(f"| {rank} | {score:.3f} | {md_escape(name)} |")
        status = f"Top {len(hits)} of {index_size(self.index)} images for {what}."
        if hidden:
            status += f" {hidden} result(s) outside the images folder or missing are not shown."
        if rows:
            status += "\n\n| # | score | image |\n|---:|---:|:---|\n" + "\n".join(rows)
        return items, status

    def _guarded(self, what: str, run: Callable[[], list[Hit]]) -> Result:
        """Run a search; bad input becomes an error line on the page instead of a traceback."""
        try:
            hits = run()
        except USER_ERRORS as exc:
            log.info("search refused (%s): %s", what, exc)
            return [], f"**Error:** {md_escape(str(exc))}"
        return self._present(hits, what)

    def search_upload(self, path: str | None) -> Result:
        """Search with an uploaded image file (Gradio hands over its path)."""
        if not path:
            return [], "Upload an image first."
        return self._guarded("the uploaded image", lambda: self._search_file(path, Path(path).name))

    def _search_file(self, path: str | Path, name: str) -> list[Hit]:
        """Check the query file, then search with it; errors name ``name``, not a temporary path."""
        s = self.settings
        check_image_file(path, s.max_bytes, s.max_pixels, name=name)
        with self._lock:  # taken only now: a slow upload or URL must not hold up other searches
            try:
                return search_index(self.index, path, s.top_k)
            except InputFileError as exc:  # e.g. a truncated image: its header read, its pixels not
                raise ValueError(f"{name}: {exc.problem}") from exc

    def search_url(self, url: str | None) -> Result:
        """Fetch the image at ``url`` (see :mod:`simsearch.apps.url_fetch`) and search with it."""
        if not url or not url.strip():
            return [], "Paste an http(s) image URL first."
        s = self.settings

        def run() -> list[Hit]:
            data = fetch_url(url.strip(), max_bytes=s.max_bytes, timeout=s.url_timeout,
                             allow_private=s.allow_private_urls)
            with tempfile.TemporaryDirectory(prefix="simsearch-url-") as tmp:
                query = Path(tmp) / "query"
                query.write_bytes(data)
                return self._search_file(query, url.strip())

        return self._guarded(f"the image at {md_escape(url.strip())}", run)

    def search_text(self, text: str | None) -> Result:
        """CLIP text search (only for indexes built from an OpenCLIP checkpoint)."""
        if self.text_search_error:
            return [], f"**Error:** {md_escape(self.text_search_error)}"
        if not text or not text.strip():
            return [], "Type a description first."
        def run() -> list[Hit]:
            with self._lock:
                return search_text(self.index, text, self.settings.top_k)

        return self._guarded(f'"{md_escape(text.strip())}"', run)


def build_app(service: SearchService) -> Any:
    """The page: query inputs on the left, the status line and the result gallery on the right."""
    import gradio as gr

    k, n = service.settings.top_k, index_size(service.index)
    with gr.Blocks(title="simsearch", delete_cache=(3600, 3600)) as demo:
        ways = "image or URL" if service.text_search_error else "image, URL or text"
        gr.Markdown(f"## simsearch\nSearch {n} images of `{service.images_dir.name}` by {ways}; "
                    f"the top {k} are shown.")
        with gr.Row():
            with gr.Column(scale=1):
                image = gr.Image(type="filepath", image_mode=None, sources=["upload", "clipboard"],
                                 label="Query image", elem_id="query-image", height=260)
                image_btn = gr.Button("Search by image", variant="primary", elem_id="search-image")
                url = gr.Textbox(label="…or an image URL (http/https)", elem_id="query-url",
                                 placeholder="https://example.com/photo.jpg")
                url_btn = gr.Button("Search by URL", elem_id="search-url")
                if service.text_search_error is None:
                    text = gr.Textbox(label="…or a description (CLIP text search)", elem_id="query-text")
                    text_btn = gr.Button("Search by text", elem_id="search-text")
                else:
                    reason = service.text_search_error.split("; ")[0]  # the why, without the how-to
                    gr.Markdown(f"*Text search is off: {md_escape(reason)}.*", elem_id="text-search-off")
            with gr.Column(scale=2):
                cols = min(k, 5)
                gallery = gr.Gallery(label=f"Top {k}", columns=cols, rows=-(-k // cols), object_fit="contain",
                                     elem_id="results", height=40 + 190 * -(-k // cols))
                status = gr.Markdown("Upload an image to search.", elem_id="status")
        outputs = [gallery, status]
        image.upload(service.search_upload, image, outputs)
        image_btn.click(service.search_upload, image, outputs)
        url.submit(service.search_url, url, outputs)
        url_btn.click(service.search_url, url, outputs)
        if service.text_search_error is None:
            text.submit(service.search_text, text, outputs)
            text_btn.click(service.search_text, text, outputs)
    return demo


def launch_app(service: SearchService, host: str = "127.0.0.1", port: int = 7860,
               block: bool = True, quiet: bool = False) -> Any:
    """Serve the app; with ``block=False`` return the running Blocks (call ``.close()`` to stop)."""
    import gradio as gr

    demo = build_app(service)
    theme = gr.themes.Default(font=_FONTS, font_mono=_MONO_FONTS)
    demo.launch(server_name=host, server_port=port, share=False, inbrowser=False, quiet=quiet,
                allowed_paths=[str(service.images_dir)], max_file_size=service.settings.max_bytes,
                prevent_thread_lock=not block, show_error=True, ssr_mode=False, theme=theme)
    return demo
