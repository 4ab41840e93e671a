"""Result grid of a whole submission: ``simsearch grid --submission S --query-dir Q --gallery-dir G
[--ground-truth GT] --out grid.png [--first-n 8] [--top-k 5] [--force]``.

One row per query (the first N by name): the query, then its top k; with ground truth, hits have
a green border and misses a red one.
"""
from __future__ import annotations

import argparse
import sys

from simsearch.utils.errors import USER_ERRORS, add_debug_flag, user_error


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--submission", required=True, help="submission .json or .csv")
    p.add_argument("--query-dir", required=True, help="folder of the query images")
    p.add_argument("--gallery-dir", required=True, help="folder of the gallery images")
    p.add_argument("--ground-truth", default=None, help="ground truth .json or .csv (colours hits)")
    p.add_argument("--out", required=True, help="PNG to write")
    p.add_argument("--first-n", type=int, default=8, help="queries shown (first by name)")
    p.add_argument("--top-k", type=int, default=5, help="results shown per query")
    p.add_argument("--thumb", type=int, default=128, help="tile size in pixels")
    p.add_argument("--force", action="store_true", help="overwrite an existing PNG")
    add_debug_flag(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        from simsearch.apps.grid import submission_grid

        out = submission_grid(args.submission, args.query_dir, args.gallery_dir, args.out,
                              first_n=args.first_n, top_k=args.top_k, ground_truth=args.ground_truth,
                              thumb=args.thumb, force=args.force)
        print(f"grid: {out}")
    except USER_ERRORS as exc:
        return user_error(exc, args.debug)
    return 0


if __name__ == "__main__":
    sys.exit(main())
