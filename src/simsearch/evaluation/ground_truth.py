"""Ground truth from labels, and ground truth without self-matches.

A test CSV with a label column is its own ground truth: a query's relevant items are the gallery
rows that share its label. When a row is both a query and a gallery item (OML's ``is_query`` =
``is_gallery`` = 1), the query is left out of its own ranking at retrieval time
(``infer.exclude_self``), so it must be left out of its own relevant list too: a query is scored
against the *other* items of its label, and a query whose label has no other item is skipped, as
the metrics skip every query without a relevant item.
"""
from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

from simsearch.data.manifest import ManifestSpec, read_items, split_query_gallery
from simsearch.utils.errors import reading
from simsearch.utils.fs import submission_meta_path

__all__ = ["ground_truth_from_labels", "ground_truth_from_test_csv", "scoring_ground_truth",
           "submission_excluded_self", "without_self"]


def ground_truth_from_labels(query: Sequence[tuple[str, str]], gallery: Sequence[tuple[str, str]]
                             ) -> dict[str, list[str]]:
    """{query name: gallery names with the query's label, the query itself left out}, from
    (name, label) pairs; a gallery keeps its order."""
    by_label: dict[str, list[str]] = defaultdict(list)
    for name, label in gallery:
        by_label[label].append(name)
    return {q: [g for g in by_label.get(label, []) if g != q] for q, label in query}


def ground_truth_from_test_csv(csv_path: str | os.PathLike[str], spec: ManifestSpec | None = None
                               ) -> dict[str, list[str]]:
    """Ground truth from a test CSV's ``is_query``/``is_gallery`` and label columns (no image is
    opened, so it scores a submission on a machine without the images)."""
    items = read_items(csv_path, spec, label=True, roles=True, check_files=False)
    query, gallery = split_query_gallery(csv_path, items)
    return ground_truth_from_labels([(i.name, str(i.label)) for i in query],
                                    [(i.name, str(i.label)) for i in gallery])


def without_self(ground_truth: Mapping[str, Sequence[str]]) -> tuple[dict[str, list[str]], int]:
    """The ground truth with each query removed from its own relevant list, and how many lists held it."""
    out, n = {}, 0
    for query, relevant in ground_truth.items():
        kept = [g for g in relevant if g != query]
        n += len(kept) != len(relevant)
        out[query] = kept
    return out, n


def submission_excluded_self(submission: str | os.PathLike[str]) -> bool:
    """Whether the submission's meta file (NAME.meta.json, written by ``simsearch infer``) says that
    queries were left out of their own rankings; False without a meta file."""
    meta = submission_meta_path(submission)
    if not Path(meta).is_file():
        return False
    with reading(meta, "a submission meta JSON file", "rewrite it with simsearch infer --force"):
        data = json.loads(Path(meta).read_text(encoding="utf-8"))
    return isinstance(data, dict) and bool(data.get("self_excluded"))


def scoring_ground_truth(ground_truth: Mapping[str, Sequence[str]], submission: str | os.PathLike[str],
                         exclude_self: bool = False) -> tuple[dict[str, list[str]], str | None]:
    """The ground truth a submission is scored against, and a line for the user (None: nothing to say).

    Each query leaves its own relevant list when ``exclude_self`` (``score --exclude-self``) or when
    the submission's meta records that queries were left out of their own rankings: the submission
    cannot list them, so they must not count as misses. A list that holds its query otherwise is
    kept (a query file and a gallery file may share a name and be a true match), with a note.
    """
    free, n = without_self(ground_truth)
    kept = {q: list(r) for q, r in ground_truth.items()}
    if n == 0:
        return kept, None
    if exclude_self or submission_excluded_self(submission):
        why = ("--exclude-self" if exclude_self
               else f"{submission_meta_path(submission)} records self-excluded queries")
        return free, f"{n} queries left out of their own relevant lists ({why})"
    return kept, (f"{n} queries are in their own relevant lists; pass --exclude-self if the "
                  "submission leaves each query out of its own ranking")
