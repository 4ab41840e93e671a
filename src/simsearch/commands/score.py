"""Score a submission against ground truth and add it to the leaderboard.

    simsearch score SUBMISSION (--ground-truth GT.json | --test-csv TEST.csv) [--exclude-self]
        [--k 1 5 10] [--format NAME]
        [--gallery-dir DIR] [--gallery-labels CSV] [--leaderboard CSV] [--primary METRIC] [--name NAME]
        [infer.submission.KEY=VALUE ...]

Every format ``simsearch infer`` writes is read: json by its extension, a CSV preset (csv, landmark,
product-matching, whale) by its header, or the one ``--format`` names, with the layout keys the file
was written with (``infer.submission.header=[a,b]``, ``separator``, ...). Ids written without their
extension are mapped back to the names of the ground truth and the gallery folder. Class-level
submissions (whale) are scored against each query's label(s): a ``query,label`` ground truth, or
gallery names mapped to labels by ``--gallery-labels`` (a query without relevant items gets the
unknown label), by MAP@5 as the Humpback whale competition did, plus r@k, map@k, mAP and MRR.
Product matching lists each item first as its own match (its ground truth gets it too) and adds the
competition's mean F1.

--leaderboard and --primary default to configs/default.yaml's score.leaderboard and score.primary.

Exit status: 0 scored, 2 unreadable or invalid input (problems listed on stderr).
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone
from pathlib import Path

from simsearch.config import ConfigError, load
from simsearch.data.manifest import ManifestSpec
from simsearch.evaluation.ground_truth import ground_truth_from_test_csv, scoring_ground_truth
from simsearch.evaluation.leaderboard import append_row, check_leaderboard, format_leaderboard
from simsearch.evaluation.metrics import map_at_k, mean_f1, score_rankings
from simsearch.inference.formats import SubmissionFormat, submission_spec
from simsearch.inference.submission import (
    detect_format,
    gallery_label_map,
    gallery_labels_from_config,
    gallery_names_from_dir,
    map_ids_to_names,
    read_ground_truth,
    read_submission,
    validate_submission,
)
from simsearch.utils.errors import USER_ERRORS, add_debug_flag, user_error

MAX_ERRORS_SHOWN = 50


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line; the defaults of --leaderboard and --primary come from the ``score`` config section."""
    score = load().score
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("submission", type=Path, help="submission file (.json or .csv)")
    truth = p.add_mutually_exclusive_group(required=True)
    truth.add_argument("--ground-truth", type=Path, default=None,
                       help="ground truth {query: [relevant gallery names]} (.json or .csv)")
    truth.add_argument("--test-csv", type=Path, default=None,
                       help="or a labelled test CSV (is_query, is_gallery and data.columns.label / id columns; "
                            "data.columns.KEY=NAME overrides map them): each query's relevant items are the "
                            "other gallery rows of its label")
    p.add_argument("--exclude-self", action="store_true",
                   help="leave each query out of its own relevant list (automatic when the submission's "
                        "meta file records self-excluded queries, and with --test-csv)")
    p.add_argument("--k", type=int, nargs="+", default=[1, 5, 10],
                   help="cut-offs for r@k, p@k, map@k and ndcg@k")
    p.add_argument("--gallery-dir", type=Path, default=None,
                   help="also reject gallery names that are not files in this folder")
    p.add_argument("--format", default=None,
                   help="the submission's format: json, csv, landmark, product-matching or whale "
                        "(default: json by the extension, a CSV preset by its header)")
    p.add_argument("--gallery-labels", type=Path, default=None,
                   help="class-level formats: CSV of gallery names and labels (columns infer.submission."
                        "name_column, label_column; default: infer.submission.gallery_labels); the ground "
                        "truth then lists gallery names, scored as their labels")
    p.add_argument("--leaderboard", type=Path, default=Path(score.leaderboard),
                   help="CSV leaderboard the scores are appended to (default: config score.leaderboard, "
                        "%(default)s)")
    p.add_argument("--no-leaderboard", action="store_true", help="only print the scores")
    p.add_argument("--primary", default=score.primary,
                   help="metric the leaderboard is sorted by: map, r1, r5, mrr, ndcg10, ... "
                        "(default: config score.primary, %(default)s)")
    p.add_argument("--name", default=None, help="leaderboard name (default: submission stem)")
    p.add_argument("overrides", nargs="*", help="infer.submission.KEY=VALUE: the layout the submission was "
                   "written with, e.g. infer.submission.header=[id,ranked] infer.submission.separator=';'")
    add_debug_flag(p)
    return p.parse_intermixed_args(argv)


def fail(messages: list[str]) -> int:
    shown = messages[:MAX_ERRORS_SHOWN]
    for message in shown:
        print(f"error: {message}", file=sys.stderr)
    if len(messages) > len(shown):
        print(f"error: ... and {len(messages) - len(shown)} more", file=sys.stderr)
    return 2


def instance_inputs(submission: dict[str, list[str]], ground_truth: dict[str, list[str]],
                    gallery: set[str] | None, spec: SubmissionFormat) -> tuple[dict, dict, list[str]]:
    """(submission with file names, ground truth, problems) of an instance-level submission."""
    known = {n for names in ground_truth.values() for n in names} | (gallery or set())
    if spec.self_match:  # each item is its own first match, as Shopee's ground truth lists it
        known |= set(ground_truth)
        ground_truth = {q: [q] + [n for n in rel if n != q] for q, rel in ground_truth.items()}
    named, errors = map_ids_to_names(submission, ground_truth, known)
    return named, ground_truth, errors + validate_submission(named, ground_truth, gallery)


def class_inputs(submission: dict[str, list[str]], ground_truth: dict[str, list[str]],
                 labels: dict[str, str] | None, spec: SubmissionFormat, gt_path: Path
                 ) -> tuple[dict, dict, list[str]]:
    """(submission, ground truth of labels, problems) of a class-level submission: with ``labels`` the
    ground truth's gallery names become their labels (none relevant: the unknown label)."""
    if labels is not None:
        names = sorted({n for rel in ground_truth.values() for n in rel})
        by_name = gallery_label_map(labels, names, f"{gt_path} (through the gallery labels)")
        unknown = [spec.unknown_label] if spec.unknown_label else []
        ground_truth = {q: list(dict.fromkeys(by_name[n] for n in rel)) or unknown
                        for q, rel in ground_truth.items()}
    named, errors = map_ids_to_names(submission, ground_truth, ())
    return named, ground_truth, errors + validate_submission(named, ground_truth)


def metrics_of(submission: dict[str, list[str]], ground_truth: dict[str, list[str]], ks: list[int],
               spec: SubmissionFormat) -> dict[str, float]:
    """The scores that apply to ``spec``: class level MAP@5 first, then r@k, map@k, mAP and MRR; instance
    level every ranking metric, and mean F1 for thresholded matches (product matching)."""
    if spec.level == "class":
        ks = sorted(set(ks) | {5})
        every = score_rankings(submission, ground_truth, ks=ks)
        kept = {key: v for key, v in every.items() if key == "mrr" or key[0] == "r" or key.startswith("map")}
        return {"map5": map_at_k(submission, ground_truth, 5), **kept}
    metrics = score_rankings(submission, ground_truth, ks=ks)
    if spec.threshold is not None:
        metrics["f1"] = mean_f1(submission, ground_truth)
    return metrics


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        cfg = load([], args.overrides)
        submission_cfg = cfg.infer.submission
    except ConfigError as exc:
        return fail([str(exc)])
    try:
        if any(k < 1 for k in args.k):
            raise ValueError(f"--k: every cut-off must be >= 1, got {' '.join(map(str, args.k))}")
        if not args.no_leaderboard:  # a leaderboard that cannot take the row fails before any score is shown
            check_leaderboard(args.leaderboard)
        spec = submission_spec(args.format or detect_format(args.submission).name, submission_cfg, key="--format")
        submission = read_submission(args.submission, spec)
        gt_path = args.ground_truth or args.test_csv
        if args.test_csv is not None:  # labels, without self (see simsearch.evaluation.ground_truth)
            ground_truth = ground_truth_from_test_csv(args.test_csv, ManifestSpec.from_config(cfg.data))
        else:
            ground_truth, note = scoring_ground_truth(read_ground_truth(args.ground_truth), args.submission,
                                                      args.exclude_self)
            if note:
                print(f"note: {note}", file=sys.stderr)
        gallery = None if args.gallery_dir is None else gallery_names_from_dir(args.gallery_dir)
        if spec.level == "class":
            labels = gallery_labels_from_config(submission_cfg, args.gallery_labels)
            submission, ground_truth, errors = class_inputs(submission, ground_truth, labels, spec, gt_path)
        else:
            submission, ground_truth, errors = instance_inputs(submission, ground_truth, gallery, spec)
        if errors:
            return fail([f"{args.submission}: {e}" for e in errors])
        try:
            metrics = metrics_of(submission, ground_truth, args.k, spec)
        except ValueError as exc:
            raise ValueError(f"{gt_path}: {exc}") from exc
        if args.primary not in metrics:
            return fail([f"--primary: {args.primary!r} is not a computed metric; "
                         f"choose from {', '.join(metrics)}"])
    except USER_ERRORS as exc:
        return user_error(exc, args.debug)

    name = args.name or args.submission.stem
    print(f"scores of {name} ({len(ground_truth)} queries):")
    for key, value in metrics.items():
        print(f"  {key:<8} {value:.4f}")
    if not args.no_leaderboard:
        row = {
            "name": name,
            "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "submission": str(args.submission),
            "format": spec.name,
            **metrics,
        }
        try:
            append_row(args.leaderboard, row)
            board = format_leaderboard(args.leaderboard, primary=args.primary, highlight=name)
        except USER_ERRORS as exc:  # checked above; only a change made meanwhile ends here
            return user_error(exc, args.debug)
        print(f"\nleaderboard ({args.leaderboard}, by {args.primary}):")
        print(board)
    return 0


if __name__ == "__main__":
    sys.exit(main())
