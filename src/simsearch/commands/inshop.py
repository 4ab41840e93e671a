"""DeepFashion In-shop in the competition layout: ``simsearch inshop --root INSHOP_DIR --out OUT_DIR
[--copy] [--force] [--partition PATH]``.

Reads ``list_eval_partition.txt`` (in ROOT, ROOT/Eval or ROOT/Anno) and writes
``OUT/training/<item_id>/``, ``OUT/test/query``, ``OUT/test/gallery`` and
``OUT/test/ground_truth.json`` (images symlinked unless ``--copy``), ready for simsearch train,
simsearch infer and simsearch score.
"""
from __future__ import annotations

import argparse
import sys

from simsearch.utils.errors import USER_ERRORS, add_debug_flag, user_error


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", required=True, help="the In-shop folder (holding img/ or Img/img/ and the list)")
    p.add_argument("--out", required=True, help="output folder for the competition layout")
    p.add_argument("--partition", default=None, help="list_eval_partition.txt, if not under --root")
    p.add_argument("--copy", action="store_true", help="copy the images instead of symlinking them")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out")
    add_debug_flag(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        from simsearch.data.inshop import build_inshop

        counts = build_inshop(args.root, args.out, copy=args.copy, force=args.force, partition=args.partition)
    except USER_ERRORS as exc:
        return user_error(exc, args.debug)
    print(f"{args.out}: {counts['train_images']} training images of {counts['train_items']} items, "
          f"{counts['queries']} queries, {counts['gallery']} gallery images"
          + (f" ({counts['queries_without_gallery']} queries without gallery left out)"
             if counts["queries_without_gallery"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
