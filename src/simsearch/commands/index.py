"""Build or extend a search index: ``simsearch index build --checkpoint RUN/best --images DIR --out
INDEX_DIR [--factory HNSW32] [--force] [key=value ...]`` or ``simsearch index add --index INDEX_DIR
--images PATH [PATH ...] [--checkpoint RUN/best]``.

``add`` embeds only the images not yet in the index and refuses a checkpoint other than the one
that built it. It appends: the new rows go to a new shard of the folder (FAISS ``index.add`` of
those rows only) and the manifest is replaced last, so an add writes about what it adds, not the
whole index, and an interrupted add leaves the index as it was (``simsearch.retrieval.store``).

``--backend qdrant --uri PATH_OR_URL --collection NAME`` in place of ``--out`` / ``--index`` keeps
the gallery in a Qdrant collection instead (``simsearch.retrieval.vectordb``; the ``vectordb`` extra).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from simsearch.commands import add_index_location, index_location
from simsearch.config import load
from simsearch.utils.errors import USER_ERRORS, add_debug_flag, user_error


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="embed a folder of images into a new index folder")
    b.add_argument("--checkpoint", required=True, help="a run's best/ or last/ folder")
    b.add_argument("--images", required=True, help="folder of catalogue images (searched recursively)")
    add_index_location(b, "--out", "index folder to write")
    b.add_argument("--factory", default=None, help="FAISS factory string (default: infer.index of the config)")
    b.add_argument("--force", action="store_true", help="replace an existing index folder")
    b.add_argument("--no-clip-features", action="store_true",
                   help="skip the CLIP image features that text search needs (OpenCLIP backbones)")
    b.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. infer.tta_flip=false")
    add_debug_flag(b)
    a = sub.add_parser("add", help="add new images to an existing index")
    add_index_location(a, "--index", "index folder made by 'build'")
    a.add_argument("--images", required=True, nargs="+", help="image files and/or folders")
    a.add_argument("--checkpoint", default=None, help="checkpoint (default: the one in the manifest)")
    add_debug_flag(a)
    args = p.parse_args(argv)
    args.location = index_location(b if args.command == "build" else a, args,
                                   "--out" if args.command == "build" else "--index")
    if args.command == "build" and args.backend != "faiss" and args.factory is not None:
        b.error(f"--factory is a FAISS factory string; --backend {args.backend} indexes the collection itself")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        from simsearch.retrieval.store import add_to_index, build_index_dir

        if args.backend != "faiss":
            return _vectordb(args)
        if args.command == "build":
            cfg = load([Path(args.checkpoint) / "config.yaml"], args.overrides)
            manifest = build_index_dir(args.checkpoint, args.images, args.out,
                                       factory=args.factory or cfg.infer.index, cfg=cfg, force=args.force,
                                       clip_features=False if args.no_clip_features else None)
            print(f"index: {args.out} ({manifest['count']} images, {manifest['factory']}, "
                  f"dim {manifest['dim']}, text search: {'yes' if manifest['clip'] else 'no'})")
        else:
            manifest = add_to_index(args.index, args.images, checkpoint=args.checkpoint)
            print(f"index: {args.index} ({manifest['count']} images, {len(manifest.get('shards', [1]))} shard(s))")
    except USER_ERRORS as exc:
        return user_error(exc, args.debug)
    return 0


def _vectordb(args: argparse.Namespace) -> int:
    from simsearch.retrieval.vectordb import add_to_collection, build_collection

    if args.command == "build":
        cfg = load([Path(args.checkpoint) / "config.yaml"], args.overrides)
        manifest = build_collection(args.checkpoint, args.images, args.location, cfg=cfg, force=args.force,
                                    clip_features=False if args.no_clip_features else None)
        print(f"index: {args.location} ({manifest['count']} images, dim {manifest['dim']}, "
              f"text search: {'yes' if manifest['clip'] else 'no'})")
    else:
        manifest = add_to_collection(args.location, args.images, checkpoint=args.checkpoint)
        print(f"index: {args.location} ({manifest['count']} images)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
