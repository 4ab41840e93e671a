"""Submission and ground-truth files: atomic, deterministic writing; strict reading; checks.

What a file looks like is a :class:`~simsearch.inference.formats.SubmissionFormat` (a preset named by
``infer.format``, changed by the ``infer.submission`` keys):

- ``json``: ``{"query": ["gallery", ...], ...}``, keys sorted, 2-space indent, UTF-8, final
  newline -- identical input gives identical bytes.
- CSV formats (``csv``, ``landmark``, ``product-matching``, ``whale``): a two-column header
  (``query,ranked_gallery`` for ``csv``; ground truth: ``query,<any name>``), one row per query sorted
  by id, the ranked ids of a row joined by the separator (a space: ids may not contain whitespace).

:func:`format_rows` turns rankings (and their similarity scores) into the rows a format writes: ids
with or without extension, top k, a threshold, the query first (product matching), or a query's
distinct gallery labels with the unknown label where similarity falls below the threshold (class
level, :func:`class_predictions`). :func:`read_submission` reads every format it can write, and
:func:`map_ids_to_names` maps ids written without extension back to file names for scoring.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from simsearch.inference.formats import PRESETS, SubmissionFormat, file_kind, preset
from simsearch.utils.errors import InputFileError, reading
from simsearch.utils.fs import write_bytes_atomic, write_json_atomic

__all__ = [
    "SubmissionError",
    "assert_valid_submission",
    "class_predictions",
    "detect_format",
    "format_rows",
    "gallery_label_map",
    "gallery_labels_from_config",
    "gallery_names_from_dir",
    "map_ids_to_names",
    "read_gallery_labels",
    "read_ground_truth",
    "read_submission",
    "stem",
    "submission_format",
    "validate_submission",
    "write_submission",
]

FORMATS = ("json", "csv")  # the file kinds, and the extensions a submission may have
_SEP_KEY = "infer.submission.separator"


class SubmissionError(ValueError):
    """A submission failed validation; ``errors`` lists every problem found."""

    def __init__(self, errors: Sequence[str]) -> None:
        self.errors = list(errors)
        shown = "\n".join(f"  - {e}" for e in self.errors[:50])
        more = f"\n  ... and {len(self.errors) - 50} more" if len(self.errors) > 50 else ""
        super().__init__(f"invalid submission ({len(self.errors)} problems):\n{shown}{more}")


def _check_rankings(rankings: Mapping[str, Sequence[str]], source: str) -> None:
    """Every key a string, every value a list of strings; errors name the query."""
    if not isinstance(rankings, Mapping):
        raise ValueError(f"{source}: expected a mapping query -> list of gallery names, "
                         f"got {type(rankings).__name__}")
    for query, ranked in rankings.items():
        if not isinstance(query, str) or not query:
            raise ValueError(f"{source}: query names must be non-empty strings, got {query!r}")
        if isinstance(ranked, (str, bytes)) or not isinstance(ranked, Sequence):
            raise ValueError(f"{source}: query {query!r}: expected a list of gallery names, "
                             f"got {type(ranked).__name__}")
        bad = [name for name in ranked if not isinstance(name, str) or not name]
        if bad:
            raise ValueError(f"{source}: query {query!r}: gallery names must be non-empty "
                             f"strings, got {bad[0]!r}")


def submission_format(path: str | os.PathLike, requested: str | None = None, key: str = "infer.format") -> str:
    """The format name of the submission file ``path``: ``requested`` (``key``) when given, else its extension.

    A requested format must write the file kind the extension says (``landmark`` writes .csv), else
    both are named; an unknown extension or format name is refused.
    """
    suffix = Path(path).suffix.lower()
    fmt = suffix[1:]
    if fmt not in FORMATS:
        raise ValueError(f"{path}: unknown submission extension {suffix or '(none)'!r}; a submission is "
                         ".json or .csv (the format follows the extension)")
    if requested is None:
        return fmt
    kind = file_kind(requested, key)
    if kind != fmt:
        raise ValueError(f"{path}: the extension {suffix} says {fmt}, but {key}={requested} writes .{kind}; "
                         f"drop {key} or name the file .{kind}")
    return requested


def stem(name: str) -> str:
    """``name`` without its extension (``a/b.jpg`` -> ``a/b``): the id of formats with ``ids: stem``."""
    return PurePosixPath(name).with_suffix("").as_posix() if PurePosixPath(name).suffix else name


def class_predictions(ranked: Sequence[str], scores: Sequence[float], labels: Mapping[str, str], k: int = 5,
                      threshold: float | None = None, unknown: str | None = None) -> list[str]:
    """A query's first ``k`` distinct gallery labels, best first, as class-level competitions want them.

    ``ranked`` are gallery names best first with their ``scores`` (higher = more similar) and
    ``labels`` their classes. With a ``threshold`` the ``unknown`` label (Humpback whales:
    ``new_whale``) is put at the first position whose similarity falls below it -- the query is
    probably none of the known classes from there on; when no score falls below it and the row still
    has room, it goes last.
    """
    out: list[str] = []
    use_unknown = threshold is not None and unknown is not None
    for name, score in zip(ranked, scores):
        if len(out) >= k:
            break
        if use_unknown and score < threshold and unknown not in out:
            out.append(unknown)
            if len(out) >= k:
                break
        label = labels[name]
        if label not in out:
            out.append(label)
    if use_unknown and unknown not in out and len(out) < k:
        out.append(unknown)
    return out


def _as_spec(fmt: str | SubmissionFormat, key: str = "fmt") -> SubmissionFormat:
    return fmt if isinstance(fmt, SubmissionFormat) else preset(fmt, key)


def _row(query: str, ranked: Sequence[str], row_scores: Sequence[float] | None, spec: SubmissionFormat,
         labels: Mapping[str, str] | None) -> list[str]:
    """What one query's cell holds under ``spec`` (before ids lose their extension)."""
    if spec.level == "class":
        k = spec.top_k or len(ranked)
        return class_predictions(ranked, row_scores or [], labels or {}, k, spec.threshold, spec.unknown_label)
    kept = list(ranked)
    if spec.threshold is not None:
        kept = [name for name, score in zip(ranked, row_scores or ()) if score >= spec.threshold]
    if spec.self_match:
        kept = [query] + [name for name in kept if name != query]
    return kept[: spec.top_k] if spec.top_k else kept


def format_rows(rankings: Mapping[str, Sequence[str]], spec: SubmissionFormat,
                scores: Mapping[str, Sequence[float]] | None = None,
                labels: Mapping[str, str] | None = None) -> dict[str, list[str]]:
    """{query id: ids (or labels) in its cell}: ``rankings`` ({query: gallery names best first}) as ``spec``
    writes them.

    ``scores`` ({query: similarity of each ranked name}) are needed by a threshold and by class-level
    formats, ``labels`` ({gallery name: label}) by class-level formats.
    """
    _check_rankings(rankings, "rankings")
    needs_scores = spec.threshold is not None or spec.level == "class"
    if needs_scores and scores is None:
        raise ValueError(f"the {spec.name} format needs the similarity scores of the rankings "
                         "(a threshold or class-level rows)")
    if spec.level == "class":
        if labels is None:
            raise ValueError(f"the {spec.name} format writes gallery labels: set infer.submission.gallery_labels "
                             "to a CSV of gallery names and labels")
        missing = sorted({n for r in rankings.values() for n in r} - set(labels))
        if missing:
            raise ValueError(f"infer.submission.gallery_labels: no label for {len(missing)} gallery "
                             f"name(s): {_preview(missing)}")
    out: dict[str, list[str]] = {}
    first_name: dict[str, str] = {}
    for query in sorted(rankings):
        row = _row(query, rankings[query], None if scores is None else scores[query], spec, labels)
        if spec.strip_extension:
            query_id = stem(query)
            row = row if spec.level == "class" else [stem(name) for name in row]
            if query_id in first_name:
                raise ValueError(f"infer.submission.ids=stem: queries {first_name[query_id]!r} and {query!r} "
                                 f"would both be written as {query_id!r}; use ids=name")
            first_name[query_id] = query
        else:
            query_id = query
        out[query_id] = row
    return out


def _check_separator(rows: Mapping[str, Sequence[str]], separator: str) -> None:
    """No id may contain the separator (a space: no whitespace), or the cell could not be split back."""
    for query, row in rows.items():
        for name in row:
            spaced = separator == " " and any(c.isspace() for c in name)
            if spaced or (separator != " " and separator in name):
                what = "whitespace" if spaced else f"the separator {separator!r}"
                raise ValueError(f"query {query!r}: id {name!r} contains {what}, which a cell separated by "
                                 f"{separator!r} cannot hold; choose another {_SEP_KEY} (or use the json format)")


def write_submission(
    path: str | os.PathLike,
    rankings: Mapping[str, Sequence[str]],
    fmt: str | SubmissionFormat = "json",
    force: bool = False,
    scores: Mapping[str, Sequence[float]] | None = None,
    labels: Mapping[str, str] | None = None,
) -> Path:
    """Write ``rankings`` ({query: gallery names best first}) in the format ``fmt`` (a preset name or a
    spec), atomically; ``scores`` and ``labels`` as :func:`format_rows` needs them.

    Refuses to overwrite an existing file unless ``force``. Rows are sorted by query, so
    identical input gives byte-identical files.
    """
    spec = _as_spec(fmt)
    rows = format_rows(rankings, spec, scores, labels)
    if spec.file == "json":
        return write_json_atomic(path, rows, force)
    _check_separator(rows, spec.separator)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(spec.header)
    for query in sorted(rows):
        writer.writerow([query, spec.separator.join(rows[query])])
    return write_bytes_atomic(path, buf.getvalue().encode("utf-8"), force)


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"query {key!r} appears twice")
        out[key] = value
    return out


def _read_json(path: Path) -> dict[str, list[str]]:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: malformed JSON at line {exc.lineno} column {exc.colno}: "
                         f"{exc.msg}") from exc
    except ValueError as exc:  # from _no_duplicate_keys
        raise ValueError(f"{path}: {exc}") from exc
    _check_rankings(obj, str(path))
    return {q: list(r) for q, r in obj.items()}


def _split(cell: str, separator: str) -> list[str]:
    if separator == " ":
        return cell.split()
    return [part.strip() for part in cell.split(separator) if part.strip()]


def _read_csv(path: Path, header: tuple[str, str | None], separator: str = " ") -> dict[str, list[str]]:
    """Rows of a two-column CSV whose header is ``header`` (None: any second column name)."""
    out: dict[str, list[str]] = {}
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        found = next(reader, None)
        first, second = header
        expected = f"{first},{second or '<column>'}"
        if found is None or len(found) != 2 or found[0] != first or (second is not None and found[1] != second):
            raise ValueError(f"{path}: line 1: expected header {expected!r}, got {found!r}")
        for row in reader:
            line = reader.line_num
            if not row:
                continue
            if len(row) != 2:
                raise ValueError(f"{path}: line {line}: expected 2 fields, got {len(row)}")
            query, names = row[0].strip(), _split(row[1], separator)
            if not query:
                raise ValueError(f"{path}: line {line}: empty query name")
            if query in out:
                raise ValueError(f"{path}: line {line}: query {query!r} appears twice")
            out[query] = names
    return out


def _input_file(path: str | os.PathLike) -> Path:
    p = Path(path)
    if p.is_dir():
        raise InputFileError(p, "is a folder; expected a .json or .csv file")
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such file")
    suffix = p.suffix.lower()
    if suffix not in (".json", ".csv"):
        raise ValueError(f"{p}: unknown format {suffix!r}; expected .json or .csv")
    return p


def _reading(p: Path):
    # invalid UTF-8, a NUL byte, no permission: errors that would not say which file
    suffix = p.suffix.lower()
    return reading(p, f"a UTF-8 {suffix[1:].upper()} file", "save it as UTF-8 text",
                   only=(UnicodeDecodeError, csv.Error))


def detect_format(path: str | os.PathLike) -> SubmissionFormat:
    """The preset a submission file is written in: json by its extension, a CSV preset by its header."""
    p = _input_file(path)
    if p.suffix.lower() == ".json":
        return PRESETS["json"]
    with _reading(p), p.open(newline="", encoding="utf-8") as fh:
        found = next(csv.reader(fh), None)
    for spec in PRESETS.values():
        if spec.file == "csv" and found is not None and tuple(found) == spec.header:
            return spec
    known = ", ".join(f"{','.join(s.header)} ({s.name})" for s in PRESETS.values() if s.file == "csv")
    raise ValueError(f"{p}: line 1: header {found!r} is no known format's ({known}); pass --format NAME, "
                     "and infer.submission.header=[QUERY,RANKED] for another header")


def read_submission(path: str | os.PathLike, fmt: str | SubmissionFormat | None = None) -> dict[str, list[str]]:
    """Read a submission ({query id: ranked ids}) written in ``fmt`` (a preset name or a spec);
    None: :func:`detect_format` (json by extension, the CSV preset by its header)."""
    p = _input_file(path)
    spec = detect_format(p) if fmt is None else _as_spec(fmt, "--format")
    if p.suffix.lower()[1:] != spec.file:
        raise ValueError(f"{p}: the {spec.name} format is a .{spec.file} file, not {p.suffix}")
    with _reading(p):
        return _read_json(p) if spec.file == "json" else _read_csv(p, spec.header, spec.separator)


def read_ground_truth(path: str | os.PathLike) -> dict[str, list[str]]:
    """Read ground truth ({query: relevant gallery names, or labels}) from .json or .csv
    (header ``query,<any name>``, relevant names space-separated)."""
    p = _input_file(path)
    with _reading(p):
        return _read_json(p) if p.suffix.lower() == ".json" else _read_csv(p, ("query", None))


def read_gallery_labels(path: str | os.PathLike, name_column: str = "name",
                        label_column: str = "label") -> dict[str, str]:
    """{gallery name: label} from a CSV with (at least) the columns ``name_column`` and ``label_column``
    (Humpback whales' train.csv: ``Image,Id``); a name given twice with two labels is refused."""
    p = Path(path)
    if p.is_dir():
        raise InputFileError(p, "is a folder; expected a CSV of gallery names and labels")
    out: dict[str, str] = {}
    with reading(p, "a UTF-8 CSV file", "save it as UTF-8 text", only=(UnicodeDecodeError, csv.Error)), \
            p.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in (name_column, label_column) if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{p}: line 1: no column {missing[0]!r} (infer.submission.name_column / "
                             f"label_column); columns: {', '.join(reader.fieldnames or [])}")
        for row in reader:
            name, label = (row[name_column] or "").strip(), (row[label_column] or "").strip()
            if not name or not label:
                raise ValueError(f"{p}: line {reader.line_num}: empty {name_column if not name else label_column}")
            if out.get(name, label) != label:
                raise ValueError(f"{p}: line {reader.line_num}: {name!r} has two labels, {out[name]!r} "
                                 f"and {label!r}")
            out[name] = label
    if not out:
        raise ValueError(f"{p}: no rows; expected gallery names and their labels")
    return out


def gallery_label_map(labels: Mapping[str, str], names: Iterable[str], source: str = "gallery labels"
                      ) -> dict[str, str]:
    """{name: label} for each of ``names`` (gallery file names), found in ``labels`` by the name or by its
    stem (a labels CSV may leave extensions out); names without a label are refused, all of them listed."""
    out, missing = {}, []
    for name in names:
        label = labels.get(name, labels.get(stem(name)))
        if label is None:
            missing.append(name)
        else:
            out[name] = label
    if missing:
        raise ValueError(f"{source}: no label for {len(missing)} gallery name(s): {_preview(sorted(missing))}")
    return out


def gallery_names_from_dir(directory: str | os.PathLike) -> set[str]:
    """Names a submission may use for the files under ``directory`` (recursive, hidden
    files skipped): each relative POSIX path, with and without its extension."""
    root = Path(directory)
    if not root.is_dir():
        raise ValueError(f"{root}: the gallery directory does not exist or is not a directory")
    names: set[str] = set()
    for file in root.rglob("*"):
        rel = file.relative_to(root)
        if file.is_file() and not any(part.startswith(".") for part in rel.parts):
            names.add(rel.as_posix())
            names.add(rel.with_suffix("").as_posix())
    return names


def _files(names: Iterable[str]) -> set[str]:
    """The file names among ``names``, where a name's stem may also be listed (gallery_names_from_dir)."""
    names = set(names)
    stems = {stem(n) for n in names if stem(n) != n}
    return {n for n in names if n not in stems}


def map_ids_to_names(submission: Mapping[str, Sequence[str]], query_names: Iterable[str],
                     gallery_names: Iterable[str]) -> tuple[dict[str, list[str]], list[str]]:
    """(submission with file names, problems): ids written without extension (``ids: stem``) mapped back.

    An id that is a name of ``query_names`` / ``gallery_names`` stays; an id that is the stem of exactly
    one name becomes that name; an id that is the stem of several is a problem (listed, per query);
    any other id is kept as written, for validation to report.
    """
    def index(names: Iterable[str]) -> tuple[set[str], dict[str, list[str]]]:
        files = _files(names)
        by_stem: dict[str, list[str]] = {}
        for name in sorted(files):
            by_stem.setdefault(stem(name), []).append(name)
        return files, by_stem

    def resolve(name: str, files: set[str], by_stem: dict[str, list[str]], problems: set[str]) -> str:
        if name in files or name not in by_stem:
            return name
        if len(by_stem[name]) > 1:
            problems.add(name)
        return by_stem[name][0]

    queries, galleries = index(query_names), index(gallery_names)
    out: dict[str, list[str]] = {}
    errors = []
    for query_id in sorted(submission):
        bad: set[str] = set()
        query = resolve(query_id, *queries, bad)
        if bad:
            errors.append(f"query {query_id!r}: the id names several queries: {_preview(queries[1][query_id])}")
        bad = set()
        row = [resolve(name, *galleries, bad) for name in submission[query_id]]
        if bad:
            errors.append(f"query {query_id!r}: {len(bad)} ids name several gallery files: "
                          f"{_preview(sorted(bad))}")
        if query in out:
            errors.append(f"query {query_id!r}: names the query {query!r} a second time")
        out[query] = row
    return out, errors


def validate_submission(
    submission: Mapping[str, Sequence[str]],
    ground_truth: Mapping[str, Sequence[str]],
    gallery_names: Iterable[str] | None = None,
) -> list[str]:
    """Every problem with ``submission``, one message per query and problem ([] = valid).

    Checks: ground-truth queries missing, queries not in the ground truth, names repeated
    within a row and -- only when ``gallery_names`` is given -- names not in the gallery.
    (The ground truth cannot stand in for the gallery: items relevant to no query would be
    flagged.) An empty row is allowed: that query simply scores 0.
    """
    errors = [f"query {q!r}: missing from the submission"
              for q in sorted(set(ground_truth) - set(submission))]
    errors += [f"query {q!r}: not a query of the ground truth"
               for q in sorted(set(submission) - set(ground_truth))]
    known = None if gallery_names is None else set(gallery_names)
    for query in sorted(submission):
        ranked = submission[query]
        repeated = sorted(name for name, count in Counter(ranked).items() if count > 1)
        if repeated:
            errors.append(f"query {query!r}: repeated gallery names {_preview(repeated)}")
        if known is not None:
            unknown = sorted(set(ranked) - known)
            if unknown:
                errors.append(f"query {query!r}: {len(unknown)} names not in the gallery: "
                              f"{_preview(unknown)}")
    return errors


def _preview(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def assert_valid_submission(
    submission: Mapping[str, Sequence[str]],
    ground_truth: Mapping[str, Sequence[str]],
    gallery_names: Iterable[str] | None = None,
) -> None:
    """Raise :class:`SubmissionError` listing every problem :func:`validate_submission` finds."""
    errors = validate_submission(submission, ground_truth, gallery_names)
    if errors:
        raise SubmissionError(errors)


def gallery_labels_from_config(submission_cfg: Any,
                               path: str | os.PathLike | None = None) -> dict[str, str] | None:
    """The labels CSV of the ``infer.submission`` section ``submission_cfg`` (``gallery_labels``, its
    ``name_column`` and ``label_column``), or of ``path`` when given; None when neither names one."""
    path = path if path is not None else submission_cfg.gallery_labels
    if not path:
        return None
    return read_gallery_labels(path, submission_cfg.name_column, submission_cfg.label_column)
