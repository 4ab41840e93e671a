"""CSV manifests: which column holds what, where each row's image is, and every problem at once.

A competition ships ``train.csv`` as ``image,label`` or ``id,landmark_id``, its images in nested
folders (``train/a/b/c/abc123.jpg``) and a test list with ``is_query``/``is_gallery`` columns (the
convention of OML). :class:`ManifestSpec` maps those columns (the config's ``data.columns``,
``data.path_template`` and ``data.image_root``); :func:`read_items` reads a manifest with it and
checks it before any model work: a missing column, an empty value, a duplicate id, a bad flag and a
template that fails on a row each stop with the file, the line and the column; every missing image
file is reported in one error.
"""
from __future__ import annotations

import csv
import os
import string
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simsearch.config import ConfigError
from simsearch.utils.errors import InputFileError, reading

__all__ = ["ManifestError", "ManifestItem", "ManifestSpec", "MissingImagesError", "QUERY_FLAG", "GALLERY_FLAG",
           "manifest_columns", "manifest_reading", "parse_flag", "read_items", "resolve_manifest_path",
           "split_query_gallery"]

PathLike = str | os.PathLike[str]

#: The columns of a test CSV that mark a row as a query and/or a gallery item (OML's names).
QUERY_FLAG, GALLERY_FLAG = "is_query", "is_gallery"
_TRUE, _FALSE = frozenset({"1", "true", "yes"}), frozenset({"0", "false", "no"})
_SHOWN = 50  # missing files listed in the message; the error's ``missing`` holds them all


class ManifestError(InputFileError):
    """A manifest row or header is wrong; the message reads ``CSV: line N: column 'C': problem``."""


class MissingImagesError(FileNotFoundError):
    """Image files named by a manifest do not exist; ``missing`` = (line, name, path) of every one."""

    def __init__(self, csv_path: PathLike, column: str, missing: Sequence[tuple[int, str, str]]) -> None:
        self.csv_path, self.column, self.missing = Path(csv_path), column, list(missing)
        shown = "; ".join(f"line {line}: {name!r} -> {path}" if name != path else f"line {line}: {path}"
                          for line, name, path in self.missing[:_SHOWN])
        more = f"; ... and {len(self.missing) - _SHOWN} more" if len(self.missing) > _SHOWN else ""
        super().__init__(f"{self.csv_path}: {len(self.missing)} image files do not exist (from {column}): "
                         f"{shown}{more}")


@dataclass(frozen=True)
class ManifestItem:
    """One row: its name in a submission, its image file, its CSV line, label and roles when read."""

    name: str
    path: str
    line: int
    label: str | None = None
    is_query: bool = True
    is_gallery: bool = True


def resolve_manifest_path(csv_path: PathLike, rel: str, image_root: PathLike | None = None) -> str:
    """A manifest's image path as a file path: relative paths resolve against ``image_root``
    (default: the CSV's folder)."""
    if os.path.isabs(rel):
        return rel
    return str(Path(image_root if image_root is not None else Path(csv_path).parent) / rel)


def manifest_reading(csv_path: PathLike) -> AbstractContextManager[None]:
    """Invalid UTF-8 or a NUL byte in a manifest: an error naming it (csv and codecs do not)."""
    return reading(csv_path, "a UTF-8 CSV manifest", "save it as UTF-8 CSV with a header row",
                   only=(UnicodeDecodeError, csv.Error))


def _check_file(csv_path: Path) -> None:
    if not csv_path.is_file():
        raise FileNotFoundError(f"manifest {csv_path} does not exist or is not a file")


def manifest_columns(csv_path: PathLike) -> list[str]:
    """The column names of a CSV manifest's header (for startup checks that read no rows)."""
    csv_path = Path(csv_path)
    _check_file(csv_path)
    with manifest_reading(csv_path), open(csv_path, newline="", encoding="utf-8-sig") as fh:
        header = next(csv.reader(fh), [])
    return [c.strip() for c in header]


def parse_flag(value: str) -> bool | None:
    """``1/0/true/false/yes/no`` (any case) as a bool; None for anything else."""
    v = value.strip().lower()
    return True if v in _TRUE else False if v in _FALSE else None


def _template_fields(template: str) -> list[str]:
    """The column names a ``str.format`` template uses (``{id[0]}`` uses ``id``)."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ConfigError(f"data.path_template: {template!r} is not a format string ({exc})") from exc
    names = []
    for _, field, _, _ in parsed:
        if field is None:
            continue
        base = field.split("[", 1)[0].split(".", 1)[0]
        if not base or base.isdigit():
            raise ConfigError(f"data.path_template: {template!r} must name columns in braces, "
                              "e.g. '{id[0]}/{id[1]}/{id}.jpg'")
        names.append(base)
    if not names:
        raise ConfigError(f"data.path_template: {template!r} uses no column; "
                          "name one in braces, e.g. '{id}.jpg'")
    return list(dict.fromkeys(names))


@dataclass(frozen=True)
class ManifestSpec:
    """How a manifest's columns map onto images: the ``data.columns``, ``data.path_template`` and
    ``data.image_root`` keys. The defaults read ``path,label`` with paths relative to the CSV."""

    path: str = "path"
    label: str = "label"
    id: str | None = None
    path_template: str | None = None
    image_root: str | None = None

    @classmethod
    def from_config(cls, data: Any) -> ManifestSpec:
        """From the config's ``data`` section (its ``columns`` sub-section and the two keys)."""
        cols = data.columns
        return cls(path=cols.path, label=cols.label, id=cols.id, path_template=data.path_template,
                   image_root=data.image_root)

    @property
    def path_source(self) -> str:
        """What names a row's image, for messages: ``column 'path'`` or ``data.path_template '...'``."""
        return (f"data.path_template {self.path_template!r}" if self.path_template
                else f"column '{self.path}'")

    def needed_columns(self, label: bool = False, roles: bool = False, paths: bool = True) -> list[str]:
        """The columns a manifest must have: the image's (path or template fields; ``paths`` False and an
        id column: none), id, label, flags."""
        cols = [] if not paths and self.id else (
            _template_fields(self.path_template) if self.path_template else [self.path])
        cols += [c for c in (self.id, self.label if label else None) if c]
        cols += [QUERY_FLAG, GALLERY_FLAG] if roles else []
        return list(dict.fromkeys(cols))

    def raw_path(self, row: Mapping[str, str]) -> str:
        """The row's image path as written (or made by the template), not yet resolved."""
        if self.path_template:
            return self.path_template.format(**row)
        return row[self.path]

    def root(self, csv_path: PathLike) -> Path:
        """The folder relative paths resolve against: ``data.image_root``, else the CSV's folder."""
        return Path(self.image_root) if self.image_root else Path(csv_path).parent


def _rows(csv_path: Path, spec: ManifestSpec, label: bool, roles: bool,
          paths: bool) -> Iterator[tuple[int, dict[str, str]]]:
    """(line, row with stripped values) after checking the header; empty lines are skipped."""
    with manifest_reading(csv_path), open(csv_path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        for needed in spec.needed_columns(label, roles, paths):
            if needed not in columns:
                raise ManifestError(csv_path, f"line 1: missing column '{needed}' "
                                    f"(found: {', '.join(columns) or 'nothing'})", _column_fix(needed, spec))
        reader.fieldnames = columns
        for row in reader:
            yield reader.line_num, {k: (v or "").strip() for k, v in row.items() if isinstance(k, str)}


def _column_fix(column: str, spec: ManifestSpec) -> str:
    """How to fix a missing column: which key names it."""
    if column in (QUERY_FLAG, GALLERY_FLAG):
        return f"a test CSV marks each row with {QUERY_FLAG} and {GALLERY_FLAG} (1/0/true/false)"
    if spec.path_template and column in _template_fields(spec.path_template):
        return "data.path_template uses it; fix the template or the CSV"
    keys = {spec.path: "data.columns.path", spec.label: "data.columns.label", spec.id: "data.columns.id"}
    return f"set {keys[column]}=<the CSV's column name>" if column in keys else ""


def _value(csv_path: Path, line: int, row: Mapping[str, str], column: str) -> str:
    value = row.get(column, "")
    if not value:
        raise ManifestError(csv_path, f"line {line}: column '{column}': empty value")
    return value


def _flag(csv_path: Path, line: int, row: Mapping[str, str], column: str) -> bool:
    flag = parse_flag(row.get(column, ""))
    if flag is None:
        raise ManifestError(csv_path, f"line {line}: column '{column}': {row.get(column, '')!r} is not "
                            "1, 0, true or false")
    return flag


def _item(csv_path: Path, spec: ManifestSpec, line: int, row: Mapping[str, str], root: Path, label: bool,
          roles: bool, paths: bool, needed: Sequence[str]) -> ManifestItem:
    for column in needed:  # the image's and the id's columns
        _value(csv_path, line, row, column)
    try:
        raw = spec.raw_path(row) if paths or not spec.id else ""
    except (IndexError, KeyError, ValueError, AttributeError) as exc:  # only a template can fail
        cols = ", ".join(f"'{c}'" for c in _template_fields(spec.path_template or ""))
        raise ManifestError(csv_path, f"line {line}: column {cols}: {spec.path_source} fails on this row "
                            f"({type(exc).__name__}: {exc})") from exc
    name = row[spec.id] if spec.id else raw
    return ManifestItem(name, resolve_manifest_path(csv_path, raw, root) if raw else "", line,
                        _value(csv_path, line, row, spec.label) if label else None,
                        _flag(csv_path, line, row, QUERY_FLAG) if roles else True,
                        _flag(csv_path, line, row, GALLERY_FLAG) if roles else True)


def read_items(csv_path: PathLike, spec: ManifestSpec | None = None, *, label: bool = False, roles: bool = False,
               unique: bool = True, check_files: bool = True) -> list[ManifestItem]:
    """Every row of a manifest as a :class:`ManifestItem`, in file order, checked.

    ``label``: read the label column; ``roles``: read ``is_query``/``is_gallery``; ``unique``: a name
    (the id, or the path value) may appear once; ``check_files``: every image must exist (all the
    missing ones are reported in one :class:`MissingImagesError`, after the rows are checked); without
    it and with an id column, no path is made (``path`` is "": ground truth needs only ids and labels).
    """
    csv_path, spec = Path(csv_path), spec or ManifestSpec()
    _check_file(csv_path)
    root = spec.root(csv_path)
    items: list[ManifestItem] = []
    first_line: dict[str, int] = {}
    paths = check_files or not spec.id
    needed = spec.needed_columns(paths=paths)
    for line, row in _rows(csv_path, spec, label, roles, paths):
        item = _item(csv_path, spec, line, row, root, label, roles, paths, needed)
        if unique and first_line.setdefault(item.name, line) != line:
            column = spec.id or (spec.path if not spec.path_template else "data.path_template")
            raise ManifestError(csv_path, f"line {line}: column '{column}': {item.name!r} repeats line "
                                f"{first_line[item.name]}", "each item may appear once")
        items.append(item)
    if not items:
        raise ManifestError(csv_path, "no rows after the header")
    if check_files:
        missing = [(i.line, i.name, i.path) for i in items if not os.path.isfile(i.path)]
        if missing:
            raise MissingImagesError(csv_path, f"{spec.path_source}, under {root}", missing)
    return items


def split_query_gallery(csv_path: PathLike, items: Sequence[ManifestItem]) -> tuple[list[ManifestItem],
                                                                                 list[ManifestItem]]:
    """The query rows and the gallery rows of a test CSV read with ``roles=True`` (a row may be both)."""
    query = [i for i in items if i.is_query]
    gallery = [i for i in items if i.is_gallery]
    for what, part in (("query", query), ("gallery", gallery)):
        if not part:
            flag = QUERY_FLAG if what == "query" else GALLERY_FLAG
            raise ManifestError(csv_path, f"no {what} row: column '{flag}' is 0/false on every line")
    return query, gallery
