"""Write a submission: ``simsearch infer --checkpoint RUN/best (--query-dir Q | --query-csv Q.csv)
(--gallery-dir G | --gallery-csv G.csv) | --test-csv T.csv [--config C] [--add-config E]
[--out submissions/NAME.json] [--force] [--strict] [key=value ...]``.

Query and gallery sets are folders (sub-folders included), CSV manifests whose columns the
``data.columns``, ``data.path_template`` and ``data.image_root`` keys map, or one test CSV with
``is_query``/``is_gallery`` columns (README "Data from CSV manifests").

The submission's format follows the extension of ``--out`` (.json or .csv); an ``infer.format=``
given on the command line must agree with it (without ``--out`` it picks the default name's extension).
``--format NAME`` (= ``infer.format=NAME``) also names a competition's preset: landmark,
product-matching, whale (README "Submission formats"); a preset set in a config file counts too.

``--ablate --ground-truth GT.json`` instead prints (and saves as markdown) the table of baseline,
+TTA, +QE, +re-ranking and all, from embeddings extracted once, plus a row for each switched-on
enhancement (``--add-config configs/multicrop.yaml``, ``configs/coarse_to_fine.yaml``,
``configs/text_fusion.yaml``, or ``infer.multicrop.enabled=true`` ...).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from simsearch.config import check_choice, load
from simsearch.inference.formats import FORMAT_NAMES, file_kind
from simsearch.utils.errors import USER_ERRORS, add_debug_flag, user_error


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="a run's best/ or last/ folder")
    p.add_argument("--config", action="append", default=[],
                   help="experiment YAML(s); default: the checkpoint's own config.yaml")
    p.add_argument("--add-config", action="append", default=[],
                   help="YAML(s) layered on top of --config (or the checkpoint's config), "
                        "e.g. configs/multicrop.yaml")
    p.add_argument("--query-dir", default=None, help="folder of query images (sub-folders included; names are "
                   "the paths below it)")
    p.add_argument("--gallery-dir", default=None, help="folder of gallery images (sub-folders included)")
    p.add_argument("--query-csv", default=None, help="or a CSV manifest of the queries (data.columns, "
                   "data.path_template, data.image_root; names are the id column's values)")
    p.add_argument("--gallery-csv", default=None, help="or a CSV manifest of the gallery")
    p.add_argument("--test-csv", default=None, help="or one CSV for both: is_query / is_gallery columns (1/0) "
                   "mark each row; a row that is both is never ranked for itself")
    p.add_argument("--out", default=None, help="submission path, .json or .csv: the extension decides the format "
                   "(default submissions/<run>.json or .csv, the file infer.format writes)")
    p.add_argument("--format", default=None, help="submission format: json, csv, landmark, product-matching or "
                   "whale (the same as infer.format=NAME; the infer.submission keys change its layout)")
    p.add_argument("--force", action="store_true", help="overwrite an existing submission")
    p.add_argument("--strict", action="store_true", help="refuse when a query leaks into gallery/training")
    p.add_argument("--train-dir", default=None, help="training folder for the leakage check "
                   "(default: data.train_dir of the config)")
    p.add_argument("--ablate", action="store_true", help="print the ablation table instead")
    p.add_argument("--ground-truth", default=None, help="ground truth JSON or CSV for --ablate (default with CSV "
                   "manifests that have a label column: the other items of each query's label)")
    p.add_argument("--ablate-out", default=None, help="markdown file for the ablation table")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. infer.top_k=50")
    add_debug_flag(p)
    return p.parse_intermixed_args(argv)


def given_on_command_line(overrides: list[str], key: str) -> bool:
    """Whether ``key=...`` is one of the command line's overrides."""
    return any(item.split("=", 1)[0].strip() == key for item in overrides)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.format is not None:  # --format NAME is infer.format=NAME typed on the command line
            if given_on_command_line(args.overrides, "infer.format"):
                raise ValueError(f"--format {args.format}: infer.format is given too; give one of them")
            args.overrides.append(f"infer.format={args.format}")
        files = (args.config or [Path(args.checkpoint) / "config.yaml"]) + args.add_config
        cfg = load(files, args.overrides)
        from simsearch.inference.sources import query_gallery_sets

        # every manifest is read and checked (columns, ids, files) before any model work
        query, gallery = query_gallery_sets(cfg, args.query_dir, args.gallery_dir, args.query_csv,
                                            args.gallery_csv, args.test_csv, labels=None if args.ablate else False)
        if args.ablate:
            from simsearch.inference.predict import run_ablation

            table = run_ablation(cfg, args.checkpoint, query, gallery,
                                 args.ground_truth, args.ablate_out, force=args.force)
            print(table)
            return 0
        from simsearch.inference.predict import make_accelerator, run_inference

        check_choice("infer.format", cfg.infer.format, FORMAT_NAMES)
        # the format follows --out's extension; an infer.format typed on this command line (or a preset
        # from anywhere) must agree
        explicit = given_on_command_line(args.overrides, "infer.format") or cfg.infer.format not in ("json", "csv")
        out = args.out or f"submissions/{cfg.run_name}.{file_kind(cfg.infer.format)}"
        fmt = cfg.infer.format if explicit else None
        accelerator = make_accelerator(cfg)
        meta = run_inference(cfg, args.checkpoint, query, gallery, out,
                             force=args.force, strict=args.strict, train_dir=args.train_dir,
                             accelerator=accelerator, fmt=fmt)
        if accelerator.is_main_process:
            print(f"submission: {out} ({meta['sizes']['queries']} queries, top {meta['sizes']['top_k']})")
        accelerator.end_training()  # every rank leaves the process group together
    except USER_ERRORS as exc:
        return user_error(exc, args.debug)
    return 0


if __name__ == "__main__":
    sys.exit(main())
