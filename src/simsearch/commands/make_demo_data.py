"""Build the offline demo competition from scikit-image's photos:
``simsearch make-demo-data [--out demo_data/skimage_items] [--seed 0] [--force]``.
"""
from __future__ import annotations

import argparse
import sys

from simsearch.data.demo import build_demo_competition


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="demo_data/skimage_items", help="competition folder to create")
    p.add_argument("--seed", type=int, default=0, help="seed of crops, jitter and split")
    p.add_argument("--views-per-item", type=int, default=6, help="photos per item (>= 2)")
    p.add_argument("--crop-grid", type=int, default=2, help="regions per photo axis")
    p.add_argument("--force", action="store_true", help="replace an existing non-empty --out")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, build, print the counts; 1 with a message when --out is taken."""
    args = parse_args(argv)
    try:
        info = build_demo_competition(args.out, seed=args.seed, views_per_item=args.views_per_item,
                                      crop_grid=args.crop_grid, force=args.force)
    except FileExistsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for key in ("items", "train_items", "test_items", "train_images", "queries", "gallery"):
        print(f"{key}: {info[key]}")
    print(f"written to {info['out_dir']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
