"""Which training images are query-domain (street photos) and which gallery-domain (shop photos).

Domain augmentation (``data.domain_aug``) needs each image's domain: from a manifest
column (``data.domain_column`` with the two ``data.domain_values``) or from a rule on
the image's path (``data.query_domain_pattern``). Everything is checked at startup,
before the data is read, with the key, column and file at fault in the message.
"""
from __future__ import annotations

import csv
import fnmatch
import os
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig

from simsearch.config import ConfigError
from simsearch.data.manifest import ManifestSpec, manifest_columns, manifest_reading, resolve_manifest_path
from simsearch.data.transforms import GALLERY, QUERY

__all__ = ["check_domain_config", "domains_from_manifest", "domains_from_pattern", "sample_domains"]


def check_domain_config(data: DictConfig) -> None:
    """Fail before any work when domain augmentation cannot tell the domains apart."""
    if not data.domain_aug:
        return
    values = list(data.domain_values)
    if len(values) != 2 or values[0] == values[1]:
        raise ConfigError(f"data.domain_values must be two different values [query, gallery], got {values}")
    if data.query_domain_pattern:
        return
    if data.train_csv is None:
        raise ConfigError("data.domain_aug=true with data.train_dir needs data.query_domain_pattern "
                          "(a glob on the relative path, e.g. '*/street/*'), or use data.train_csv "
                          "with a data.domain_column")
    columns = manifest_columns(data.train_csv)
    if data.domain_column not in columns:
        raise ConfigError(f"data.domain_aug=true: {data.train_csv} has no column "
                          f"'{data.domain_column}' (data.domain_column; found: {', '.join(columns) or 'nothing'})")


def domains_from_manifest(csv_path: str | os.PathLike[str], column: str,
                          values: Sequence[str], spec: ManifestSpec | None = None) -> dict[str, str]:
    """Map each manifest image (its path as read_manifest resolves it with ``spec``) to QUERY or GALLERY."""
    query_value, gallery_value = values
    names = {query_value: QUERY, gallery_value: GALLERY}
    spec = spec or ManifestSpec()
    root = spec.root(csv_path)
    out: dict[str, str] = {}
    with manifest_reading(csv_path), open(csv_path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        reader.fieldnames = [c.strip() for c in (reader.fieldnames or [])]
        if column not in reader.fieldnames:
            raise ConfigError(f"{csv_path}: no column '{column}' (data.domain_column; "
                              f"found: {', '.join(reader.fieldnames) or 'nothing'})")
        for row in reader:
            value = (row.get(column) or "").strip()
            if value not in names:
                raise ValueError(f"{csv_path}: line {reader.line_num}: {column} is '{value}', expected "
                                 f"'{query_value}' or '{gallery_value}' (data.domain_values)")
            path = resolve_manifest_path(csv_path, spec.raw_path({k: (v or "").strip() for k, v in row.items()
                                                                  if isinstance(k, str)}), root)
            if out.setdefault(path, names[value]) != names[value]:
                raise ValueError(f"{csv_path}: line {reader.line_num}: {path} is listed in both domains")
    return out


def _matches(rel: str, pattern: str) -> bool:
    if "/" not in pattern and not any(ch in pattern for ch in "*?["):
        return pattern in rel.split("/")[:-1]  # a plain name: a folder of that name anywhere
    return fnmatch.fnmatchcase(rel, pattern)


def domains_from_pattern(paths: Sequence[str], root: str | os.PathLike[str], pattern: str) -> list[str]:
    """QUERY for paths whose form relative to ``root`` matches ``pattern``, else GALLERY.

    ``pattern`` is a glob on the '/'-separated relative path (``*`` crosses folders, so
    ``*/street/*`` finds a ``street`` folder below the class folder), or a plain folder
    name (``street``) that matches that folder at any depth.
    """
    root = Path(root).resolve()
    out = []
    for p in paths:
        full = Path(p).resolve()
        rel = full.relative_to(root).as_posix() if full.is_relative_to(root) else full.as_posix()
        out.append(QUERY if _matches(rel, pattern) else GALLERY)
    return out


def sample_domains(samples: Sequence[tuple[str, int]], data: DictConfig) -> list[str]:
    """The domain of each sample per the config (check_domain_config has passed)."""
    paths = [s[0] for s in samples]
    if data.query_domain_pattern:
        root = data.train_dir if data.train_dir is not None else Path(data.train_csv).parent
        return domains_from_pattern(paths, root, data.query_domain_pattern)
    by_path = domains_from_manifest(data.train_csv, data.domain_column, list(data.domain_values),
                                    ManifestSpec.from_config(data))
    return [by_path[p] for p in paths]
