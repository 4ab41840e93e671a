"""Compare approaches on one competition: ``simsearch compare --configs A.yaml B.yaml ... --data ROOT
[--runs RUN ...] [--out submissions/compare.md] [--work runs/compare] [-o key=value ...]``.

ROOT holds training/<class>/*, test/query, test/gallery and test/ground_truth.json (the layout of
../shared/data/caltech101 and of the demo). Each --configs entry is one approach: config files
joined by '+', optionally with key=value overrides for it alone
(configs/lora_clip.yaml+configs/tiny_test.yaml+data.image_size=null); -o overrides apply to all.
Writes one table (R@1, R@5, P@5, mAP, training time, inference img/s, parameters, embedding
dim) and a sentence on when to choose which, computed from the numbers.
"""
from __future__ import annotations

import argparse
import logging
import shlex
import sys

from simsearch.utils.errors import USER_ERRORS, add_debug_flag, user_error


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", default=[], help="approaches to train: A.yaml[+B.yaml][+key=value]")
    p.add_argument("--runs", nargs="+", default=[], help="finished run (or checkpoint) folders to evaluate")
    p.add_argument("--data", required=True, help="competition root (training/, test/query, test/gallery, "
                                                 "test/ground_truth.json)")
    p.add_argument("--out", default="submissions/compare.md", help="markdown report to write")
    p.add_argument("--work", default="runs/compare", help="where the approaches' run folders go")
    p.add_argument("-o", "--override", dest="overrides", nargs="+", action="extend", default=[],
                   help="key=value overrides for every approach, e.g. train.epochs=2")
    p.add_argument("--max-queries", type=int, default=None, help="evaluate on a seeded subset of the queries")
    p.add_argument("--max-gallery", type=int, default=None, help="... and of the gallery (ground truth cut to it)")
    p.add_argument("--reuse", action="store_true", help="evaluate an approach's finished run in --work "
                                                        "instead of refusing to train over it")
    p.add_argument("--force", action="store_true", help="overwrite an existing --out")
    add_debug_flag(p)
    return p.parse_args(argv)


def _log_to_stderr() -> None:
    # Progress lines before the first run; fit() then swaps in its own (marked) handlers, as here.
    logger = logging.getLogger("simsearch")
    for h in [h for h in logger.handlers if getattr(h, "_simsearch", False)]:
        logger.removeHandler(h)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler._simsearch = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _log_to_stderr()
    try:
        from simsearch.benchmarks.compare import compare, parse_approach, run_approach

        approaches = [parse_approach(s) for s in args.configs] + [run_approach(r) for r in args.runs]
        command = "simsearch compare " + shlex.join(sys.argv[1:] if argv is None else argv)
        rows = compare(approaches, args.data, args.out, work=args.work, overrides=args.overrides,
                       force=args.force, reuse=args.reuse, max_queries=args.max_queries,
                       max_gallery=args.max_gallery, command=command)
    except USER_ERRORS as exc:
        return user_error(exc, args.debug)
    with open(args.out, encoding="utf-8") as f:
        print(f.read())
    print(f"compared {len(rows)} approach(es): {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
