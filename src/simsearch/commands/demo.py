"""The whole competition loop, offline: ``simsearch demo [--data COMPETITION]``.

1. build a small instance-level competition from scikit-image's bundled photos (unless --data),
   hard enough that the pretrained model misses many queries;
2. save the untrained model (``train.epochs=0``: the backbone's zero-shot retrieval) and train
   ``configs/effnet_lite0_offline.yaml`` (the recipe: head, then top block, then WiSE-FT);
3. print untrained vs fine-tuned vs fine-tuned + post-processing on the test split;
4. write a submission with the config's post-processing, score it, print the leaderboard.

COMPETITION is laid out like ../shared/data/caltech101: training/<class>/*, test/query,
test/gallery, test/ground_truth.json. Everything the demo writes lives under --work (default
runs/demo), which it replaces on each run, and submissions/demo_<name>.json.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from simsearch.commands import infer, score, train
from simsearch.config import resolve_config

CONFIG = resolve_config("effnet_lite0_offline")
# The demo competition: 3x3 overlapping regions per photo ("items"), 6 views each, cropped to 35%
# of the region and rotated up to 40 degrees; a known catalogue: every item trains on 4 views,
# and 40% of the items are searched with one other view among the test items' remaining views.
# The ImageNet features alone find the right item first for fewer than 85% of the queries.
DEMO_DATA = {"views_per_item": 7, "crop_grid": 3, "min_area": 0.35, "max_rotation": 40.0, "seen_items": 4}
# 160 px (the demo photos' long side) for training and inference alike, and 20 instead of the recipe's
# 30 top-block epochs: the demo stays under 5 minutes (README: 30 epochs took 5 min 35 s in all).
DEMO_OVERRIDES = ["data.image_size=160", "train.epochs=30",
                  "train.stages=[{epochs: 10, train: head, lr: 1.0e-3}, "
                  "{epochs: 20, unfreeze_last: 2, lr: 3.0e-4, backbone_lr: 1.0e-4}]"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None, help="competition folder (default: build the skimage demo)")
    p.add_argument("--work", default="runs/demo", help="demo-owned folder, replaced on each run")
    p.add_argument("--val-split", default="image", choices=["image", "class"],
                   help="validation hold-out: image (the test asks for training items or classes, as the "
                        "skimage demo and caltech101) or class (new ones)")
    p.add_argument("overrides", nargs="*", help="extra key=value overrides for training and inference")
    return p.parse_intermixed_args(argv)


def _step(title: str) -> float:
    print(f"\n=== {title} ===", flush=True)
    return time.perf_counter()


def _build_data(work: Path) -> tuple[Path, str]:
    from simsearch.data.demo import ViewStyle, build_demo_competition

    d = DEMO_DATA
    info = build_demo_competition(work / "competition", seed=0, views_per_item=d["views_per_item"],
                                  crop_grid=d["crop_grid"], seen_items=d["seen_items"],
                                  style=ViewStyle(min_area=d["min_area"], max_rotation=d["max_rotation"]))
    print(f"built {info['items']} items from scikit-image photos: {info['train_images']} training "
          f"images, {info['queries']} queries, {info['gallery']} gallery images in {info['out_dir']}")
    return Path(info["out_dir"]), "skimage_items"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = Path(args.work)
    if work.exists():
        print(f"replacing the previous demo folder {work}")
        shutil.rmtree(work)
    t_start = _step("1. data")
    data, name = _build_data(work) if args.data is None else (Path(args.data), Path(args.data).name)
    val_split = args.val_split
    overrides = [*(DEMO_OVERRIDES if args.data is None else []), *args.overrides]
    common = ["--config", str(CONFIG), f"data.train_dir={data / 'training'}", f"data.val_split={val_split}",
              f"train.output_dir={work}", *overrides]

    _step("2. untrained model, then train effnet_lite0_offline")
    if train.main([*common, f"run_name={name}_untrained", "train.epochs=0", "train.stages=[]",
                   "train.wise_alphas=[]"]) != 0:
        return 1
    t_train = time.perf_counter()
    if train.main([*common, f"run_name={name}"]) != 0:
        return 1
    train_s = time.perf_counter() - t_train
    ckpt, test = work / name / "best", data / "test"

    _step("3. does training pay? (test split)")
    from simsearch.benchmarks.quality import describe_post, quality_table, score_checkpoint
    from simsearch.config import load

    cfg = load([CONFIG], overrides)
    untrained = work / f"{name}_untrained" / "best"
    rows = [{"name": "untrained", "train_s": None, "scores": score_checkpoint(untrained, test, cfg)},
            {"name": "fine-tuned", "train_s": train_s, "scores": score_checkpoint(ckpt, test, cfg)}]
    print(quality_table(rows, describe_post(cfg)))

    _step("4. submission with the config's post-processing, score and leaderboard")
    sub = Path("submissions") / f"demo_{name}.json"
    # --force: this file is the demo's own output, rewritten on every demo run.
    if infer.main(["--checkpoint", str(ckpt), "--config", str(CONFIG), "--query-dir", str(test / "query"),
                   "--gallery-dir", str(test / "gallery"), f"run_name={name}", *overrides, "--out", str(sub),
                   "--force", f"infer.cache_dir={work / 'cache'}"]) != 0:
        return 1
    if score.main([str(sub), "--ground-truth", str(test / "ground_truth.json"),
                   "--gallery-dir", str(test / "gallery"), "--name", f"demo_{name}"]) != 0:
        return 1
    print(f"demo finished in {time.perf_counter() - t_start:.0f} s; outputs in {work} and {sub}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
