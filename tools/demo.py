"""The whole competition loop, offline: ``python -m tools.demo [--data COMPETITION]``.

1. build a small instance-level competition from scikit-image's bundled photos (unless --data);
2. train ``configs/effnet_lite0_offline.yaml`` briefly;
3. write a submission with flip TTA, alpha-QE and k-reciprocal re-ranking;
4. score it, print the leaderboard, then the ablation table.

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

from tools import infer, score, train

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None, help="competition folder (default: build the skimage demo)")
    p.add_argument("--work", default="runs/demo", help="demo-owned folder, replaced on each run")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default 5, or 1 with --data)")
    p.add_argument("--val-split", default=None, choices=["image", "class"],
                   help="validation hold-out (default: class for the instance-level skimage demo, "
                        "image for --data)")
    p.add_argument("overrides", nargs="*", help="extra key=value overrides for training and inference")
    return p.parse_intermixed_args(argv)


def _step(title: str) -> float:
    print(f"\n=== {title} ===", flush=True)
    return time.perf_counter()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = Path(args.work)
    if work.exists():
        print(f"replacing the previous demo folder {work}")
        shutil.rmtree(work)
    t_start = _step("1. data")
    if args.data is None:
        from simsearch.demo_data import build_demo_competition

        info = build_demo_competition(work / "competition", seed=0)
        data, name = Path(info["out_dir"]), "skimage_items"
        print(f"built {info['items']} items from scikit-image photos: {info['train_images']} training "
              f"images, {info['queries']} queries, {info['gallery']} gallery images in {data}")
    else:
        data, name = Path(args.data), Path(args.data).name
    epochs = args.epochs or (5 if args.data is None else 1)
    val_split = args.val_split or ("class" if args.data is None else "image")
    config = str(REPO / "configs" / "effnet_lite0_offline.yaml")

    _step("2. train effnet_lite0_offline")
    if train.main(["--config", config, f"data.train_dir={data / 'training'}", f"data.val_split={val_split}",
                   f"train.output_dir={work}", f"run_name={name}", f"train.epochs={epochs}",
                   *args.overrides]) != 0:
        return 1
    ckpt = work / name / "best"

    _step("3. infer with flip TTA, alpha-QE and k-reciprocal re-ranking")
    sub = Path("submissions") / f"demo_{name}.json"
    test = data / "test"
    common = ["--checkpoint", str(ckpt), "--config", config, "--query-dir", str(test / "query"),
              "--gallery-dir", str(test / "gallery"), f"run_name={name}", *args.overrides]
    # --force: this file is the demo's own output, rewritten on every demo run.
    if infer.main([*common, "--out", str(sub), "--force", "infer.tta_flip=true", "infer.qe=alpha",
                   "infer.rerank=true", f"infer.cache_dir={work / 'cache'}"]) != 0:
        return 1

    _step("4. score and leaderboard")
    if score.main([str(sub), "--ground-truth", str(test / "ground_truth.json"),
                   "--gallery-dir", str(test / "gallery"), "--name", f"demo_{name}"]) != 0:
        return 1

    _step("5. ablation")
    if infer.main([*common, "--ablate", "--ground-truth", str(test / "ground_truth.json"),
                   "--ablate-out", str(work / "ablation.md"), "infer.qe=alpha"]) != 0:
        return 1
    print(f"demo finished in {time.perf_counter() - t_start:.0f} s; outputs in {work} and {sub}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
