"""Quality benchmark: does the shipped recipe beat the pretrained model on a competition's test split?

    python -m tools.bench.quality --data ROOT [--config configs/effnet_lite0_offline.yaml]
        [--minutes 30] [--val-split image|class] [--work runs/bench_quality] [key=value ...]

ROOT is laid out like ../shared/data/caltech101 (training/<class>/*, test/query, test/gallery,
test/ground_truth.json). The config is run twice through the real ``tools/train.py``: with
``train.epochs=0`` (the untrained model: the best zero-shot setting of the same config, since the
recipe's identity head passes the backbone's GeM features through) and as shipped, with its
training time capped by ``--minutes`` (``train.time_limit_min``). Both checkpoints are scored
plain and with the config's post-processing; the table gives R@1, R@5, mAP, MRR and training
time. Validation follows ``--val-split`` (use ``class`` when the test classes are unseen).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from tools import train
from tools.bench.common import header, write_json

REPO = Path(__file__).resolve().parents[2]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="competition folder (training/, test/)")
    p.add_argument("--config", default=str(REPO / "configs" / "effnet_lite0_offline.yaml"))
    p.add_argument("--minutes", type=float, default=30.0, help="training time budget (train.time_limit_min)")
    p.add_argument("--val-split", default="image", choices=["image", "class"],
                   help="validation hold-out: image (seen test classes) or class (unseen test classes)")
    p.add_argument("--work", default="runs/bench_quality", help="benchmark-owned folder, replaced per data set")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("overrides", nargs="*", help="key=value overrides for both runs")
    return p.parse_intermixed_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from simsearch.config import load
    from simsearch.quality import describe_post, quality_table, score_checkpoint

    data = Path(args.data)
    work = Path(args.work) / data.name
    if work.exists():
        shutil.rmtree(work)
    common = ["--config", args.config, f"data.train_dir={data / 'training'}", f"data.val_split={args.val_split}",
              f"train.output_dir={work}", *args.overrides]
    rows = []
    for name, extra in (("untrained", ["train.epochs=0", "train.stages=[]", "train.wise_alphas=[]"]),
                        ("fine-tuned", [f"train.time_limit_min={args.minutes}"])):
        t0 = time.perf_counter()
        if train.main([*common, f"run_name={name}", *extra]) != 0:
            return 1
        seconds = time.perf_counter() - t0
        ckpt = work / name / "best"
        meta = json.loads((ckpt / "meta.json").read_text())
        rows.append({"name": name, "train_s": seconds if name != "untrained" else None,
                     "scores": score_checkpoint(ckpt, data / "test"), "wise_alpha": meta.get("wise_alpha"),
                     "val": meta.get("metrics", {})})
    cfg = load([args.config], args.overrides)
    print(header(f"Quality: {Path(args.config).name} on {data.name}",
                 notes=[f"training budget {args.minutes:g} min, validation by {args.val_split}",
                        f"WiSE-FT alpha kept: {rows[1]['wise_alpha']}"]))
    print(quality_table(rows, describe_post(cfg)))
    if args.json:
        write_json(args.json, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
