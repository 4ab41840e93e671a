"""Search an index: ``simsearch search --index INDEX_DIR (--query-image PATH | --query-text TEXT)
[--top-k 10] [--grid out.png] [--force] [--multicrop grid|yolo:WEIGHTS [--fusion rrf|max] [--max-crops 5]]``.

Prints one line per result, best first: rank, score (cosine) and path. ``--grid`` also saves the
query and its results as a PNG. Text search needs an index built from an OpenCLIP checkpoint.
``--multicrop`` searches with the whole image and several crops of it (a centre crop and a 2x2
grid, or a YOLO detector's boxes) and fuses the results; the score is then the fused score.
``--backend qdrant --uri PATH_OR_URL --collection NAME`` in place of ``--index`` searches a Qdrant
collection made by ``simsearch index build --backend qdrant`` (not yet with ``--multicrop``).
"""
from __future__ import annotations

import argparse
import sys

from simsearch.commands import add_index_location, index_location
from simsearch.utils.errors import USER_ERRORS, add_debug_flag, user_error


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_index_location(p, "--index", "index folder made by simsearch index build")
    q = p.add_mutually_exclusive_group(required=True)
    q.add_argument("--query-image", default=None, help="image to search with")
    q.add_argument("--query-text", default=None, help="text to search with (CLIP backbones only)")
    p.add_argument("--top-k", type=int, default=10, help="number of results")
    p.add_argument("--grid", default=None, help="also save a result grid PNG here")
    p.add_argument("--thumb", type=int, default=128, help="grid tile size in pixels")
    p.add_argument("--force", action="store_true", help="overwrite an existing grid PNG")
    p.add_argument("--checkpoint", default=None, help="checkpoint folder, if it moved since the build")
    p.add_argument("--multicrop", default=None, metavar="DETECTOR",
                   help="multi-crop query: grid, or yolo:PATH (ultralytics weights .pt or model .yaml)")
    p.add_argument("--fusion", default="rrf", choices=("rrf", "max"), help="multi-crop fusion (default rrf)")
    p.add_argument("--max-crops", type=int, default=5, help="multi-crop: crops searched, whole image included")
    p.add_argument("--rrf-k", type=float, default=60.0, help="multi-crop: the k of reciprocal-rank fusion")
    add_debug_flag(p)
    args = p.parse_args(argv)
    args.location = index_location(p, args, "--index")
    if args.multicrop is not None and args.backend != "faiss":
        p.error(f"--multicrop searches index folders only, not --backend {args.backend}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        from simsearch.apps.grid import check_grid_out, result_grid
        from simsearch.retrieval.vectordb import open_index, search_index, search_text

        if args.top_k < 1:
            raise ValueError(f"--top-k: must be >= 1, got {args.top_k}")
        if args.grid:  # checked before the search: a bad --grid must not cost the search first
            check_grid_out(args.grid, args.force, args.thumb)
        if args.max_crops < 1:
            raise ValueError(f"--max-crops: must be >= 1, got {args.max_crops}")
        if args.multicrop is not None and args.query_image is None:
            raise ValueError("--multicrop needs --query-image")
        if args.multicrop is not None:
            from simsearch.retrieval.multicrop import MultiCropOptions, search_index_multicrop

            opts = MultiCropOptions.from_config({}, enabled=True, detector=args.multicrop, fusion=args.fusion,
                                                max_crops=args.max_crops, rrf_k=args.rrf_k)
            hits = search_index_multicrop(args.index, args.query_image, args.top_k, opts, args.checkpoint)
        elif args.query_image is not None:
            hits = search_index(open_index(args.location), args.query_image, args.top_k,
                                checkpoint=args.checkpoint)
        else:
            hits = search_text(open_index(args.location), args.query_text, args.top_k)
        for rank, (path, score) in enumerate(hits, 1):
            print(f"{rank:>3}  {score:.4f}  {path}")
        if args.grid:
            result_grid(args.query_image, hits, args.grid, thumb=args.thumb, force=args.force,
                        query_text=args.query_text)
            print(f"grid: {args.grid}")
    except USER_ERRORS as exc:
        return user_error(exc, args.debug)
    return 0


if __name__ == "__main__":
    sys.exit(main())
