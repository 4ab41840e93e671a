"""Submission formats: one small spec (:class:`SubmissionFormat`) and the presets of public competitions.

A format says how a ranking becomes a file: JSON or CSV, the CSV header, the text between ranked ids,
ids with or without their extension, how many per row, a similarity threshold, and whether a row
lists gallery items (instance level) or their distinct labels (class level). ``infer.format`` names a
preset; the ``infer.submission`` keys change any of its fields (null keeps the preset's value). The
writer and the reader are in :mod:`simsearch.inference.submission`.

Presets, as each competition's sample submission has them:

- ``json``: ``{"query": ["gallery", ...]}`` (the default); ``csv``: ``query,ranked_gallery``.
- ``landmark``: Google Landmark Retrieval (Kaggle 2019-2021): ``id,images``, ids without extension,
  space-separated, top 100.
- ``product-matching``: Shopee Price Match Guarantee (Kaggle 2021): ``posting_id,matches``; query and
  gallery are the same set, each item matches itself and is listed first, then the items whose
  similarity reaches the threshold, at most 50.
- ``whale``: Humpback Whale Identification (Kaggle 2019): ``Image,Id``, a query's 5 distinct gallery
  labels, with ``new_whale`` put where the similarity falls below the threshold (scored by MAP@5).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from simsearch.config import ConfigError, check_choice, check_number

__all__ = ["FORMAT_NAMES", "PRESETS", "SubmissionFormat", "file_kind", "preset", "submission_spec"]

_KEY = "infer.submission"


@dataclass(frozen=True)
class SubmissionFormat:
    """How rankings are written; ``check`` names the ``infer.submission`` key of a bad value."""

    name: str                                  # the preset it came from (infer.format)
    file: str = "csv"                          # json or csv: the syntax, and the extension of the file
    header: tuple[str, str] = ("query", "ranked_gallery")  # CSV columns: query id, ranked ids
    separator: str = " "                       # between the ranked ids of a CSV cell
    ids: str = "name"                          # name (with extension) or stem (without), queries and gallery
    top_k: int | None = None                   # ids (class level: labels) per row; None = all retrieved
    threshold: float | None = None             # similarity cut-off in [-1, 1]; None = none
    level: str = "instance"                    # instance: gallery ids; class: distinct gallery labels
    unknown_label: str | None = None           # class level: written where similarity falls below threshold
    self_match: bool = False                   # the query is listed first (query set == gallery set)

    @property
    def strip_extension(self) -> bool:
        """Whether ids are written without their file extension."""
        return self.ids == "stem"

    def check(self) -> None:
        """Raise ConfigError naming the key and the value at fault."""
        check_choice(f"{self.name} preset: file", self.file, ("json", "csv"))
        if self.file == "csv":
            header = self.header
            if (not isinstance(header, tuple) or len(header) != 2
                    or not all(isinstance(c, str) and c.strip() for c in header) or header[0] == header[1]):
                raise ConfigError(f"{_KEY}.header: must be two different column names (query column, "
                                  f"ranked column), e.g. [id, images]; got {list(header)!r}")
            sep = self.separator
            if not isinstance(sep, str) or not sep or any(c in sep for c in "\r\n\""):
                raise ConfigError(f"{_KEY}.separator: must be non-empty text without quotes or line breaks "
                                  f"(a space, ';', '|'), got {sep!r}")
        elif self.header != PRESETS["json"].header or self.separator != PRESETS["json"].separator:
            raise ConfigError(f"{_KEY}.header / separator: a json submission has neither; got "
                              f"{list(self.header)!r} / {self.separator!r} (name a CSV format in infer.format)")
        check_choice(f"{_KEY}.ids", self.ids, ("name", "stem"))
        check_choice(f"{_KEY}.level", self.level, ("instance", "class"))
        check_number(f"{_KEY}.top_k", self.top_k, 1, null_ok=True)
        check_number(f"{_KEY}.threshold", self.threshold, -1.0, 1.0, null_ok=True,
                     why="a similarity: cosine, or 1 - re-ranked distance")
        if self.level == "class" and self.threshold is not None and not self.unknown_label:
            raise ConfigError(f"{_KEY}.unknown_label: a class-level format with a threshold needs the label "
                              f"written below it (whale: new_whale), got {self.unknown_label!r}")
        if self.unknown_label is not None and (not isinstance(self.unknown_label, str)
                                               or not self.unknown_label.strip()):
            raise ConfigError(f"{_KEY}.unknown_label: must be a non-empty label, got {self.unknown_label!r}")


PRESETS: dict[str, SubmissionFormat] = {
    "json": SubmissionFormat("json", file="json"),
    "csv": SubmissionFormat("csv"),
    "landmark": SubmissionFormat("landmark", header=("id", "images"), ids="stem", top_k=100),
    "product-matching": SubmissionFormat("product-matching", header=("posting_id", "matches"), ids="stem",
                                         top_k=50, threshold=0.5, self_match=True),
    "whale": SubmissionFormat("whale", header=("Image", "Id"), top_k=5, threshold=0.5, level="class",
                              unknown_label="new_whale"),
}
FORMAT_NAMES = tuple(PRESETS)

def preset(name: str, key: str = "infer.format") -> SubmissionFormat:
    """The preset called ``name``; an unknown name is refused naming ``key`` and the known names."""
    check_choice(key, name, FORMAT_NAMES)
    return PRESETS[name]


def file_kind(name: str, key: str = "infer.format") -> str:
    """json or csv: the syntax (and extension) of the preset ``name``."""
    return preset(name, key).file


def submission_spec(name: str, submission_cfg: Any = None, key: str = "infer.format") -> SubmissionFormat:
    """The preset ``name`` with the non-null keys of the ``infer.submission`` section ``submission_cfg`` applied,
    checked (a bad value raises ConfigError naming its key)."""
    spec = preset(name, key)
    if submission_cfg is None:
        return spec
    values = {"header": submission_cfg.header, "separator": submission_cfg.separator, "ids": submission_cfg.ids,
              "top_k": submission_cfg.top_k, "threshold": submission_cfg.threshold, "level": submission_cfg.level,
              "unknown_label": submission_cfg.unknown_label}
    changes = {f: v for f, v in values.items() if v is not None}
    if "header" in changes:
        changes["header"] = tuple(changes["header"])
    spec = dataclasses.replace(spec, **changes)
    spec.check()
    return spec


for _spec in PRESETS.values():  # the presets are data; a typo in one fails at import
    _spec.check()
