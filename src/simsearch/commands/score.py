"""Score a submission against ground truth and add it to the leaderboard.

    simsearch score SUBMISSION --ground-truth GT.json [--k 1 5 10]
        [--gallery-dir DIR] [--leaderboard CSV] [--primary METRIC] [--name NAME]

--leaderboard and --primary default to configs/default.yaml's score.leaderboard and score.primary.

Exit status: 0 scored, 2 unreadable or invalid input (problems listed on stderr).
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone
from pathlib import Path

from simsearch.config import ConfigError, load
from simsearch.evaluation.leaderboard import append_row, check_leaderboard, format_leaderboard
from simsearch.evaluation.metrics import score_rankings
from simsearch.inference.submission import (
    gallery_names_from_dir,
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
    p.add_argument("--ground-truth", type=Path, required=True,
                   help="ground truth {query: [relevant gallery names]} (.json or .csv)")
    p.add_argument("--k", type=int, nargs="+", default=[1, 5, 10],
                   help="cut-offs for r@k, p@k, map@k and ndcg@k")
    p.add_argument("--gallery-dir", type=Path, default=None,
                   help="also reject gallery names that are not files in this folder")
    p.add_argument("--leaderboard", type=Path, default=Path(score.leaderboard),
                   help="CSV leaderboard the scores are appended to (default: config score.leaderboard, "
                        "%(default)s)")
    p.add_argument("--no-leaderboard", action="store_true", help="only print the scores")
    p.add_argument("--primary", default=score.primary,
                   help="metric the leaderboard is sorted by: map, r1, r5, mrr, ndcg10, ... "
                        "(default: config score.primary, %(default)s)")
    p.add_argument("--name", default=None, help="leaderboard name (default: submission stem)")
    add_debug_flag(p)
    return p.parse_args(argv)


def fail(messages: list[str]) -> int:
    shown = messages[:MAX_ERRORS_SHOWN]
    for message in shown:
        print(f"error: {message}", file=sys.stderr)
    if len(messages) > len(shown):
        print(f"error: ... and {len(messages) - len(shown)} more", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except ConfigError as exc:
        return fail([str(exc)])
    try:
        if any(k < 1 for k in args.k):
            raise ValueError(f"--k: every cut-off must be >= 1, got {' '.join(map(str, args.k))}")
        if not args.no_leaderboard:  # a leaderboard that cannot take the row fails before any score is shown
            check_leaderboard(args.leaderboard)
        submission = read_submission(args.submission)
        ground_truth = read_ground_truth(args.ground_truth)
        gallery = None if args.gallery_dir is None else gallery_names_from_dir(args.gallery_dir)
        errors = validate_submission(submission, ground_truth, gallery)
        if errors:
            return fail([f"{args.submission}: {e}" for e in errors])
        try:
            metrics = score_rankings(submission, ground_truth, ks=args.k)
        except ValueError as exc:
            raise ValueError(f"{args.ground_truth}: {exc}") from exc
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
