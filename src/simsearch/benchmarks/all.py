"""Run every benchmark, at full size or smaller, and print one summary table.

    simsearch bench all [--quick | --smallest] [--only rerank index] [--json DIR]

Full size is what the README reports (tens of minutes on 2 cores); --quick runs every benchmark
at small sizes in a few minutes; --smallest runs them at tiny sizes in seconds, for CI. Each
benchmark prints its own table; --json DIR writes DIR/<benchmark>.json and DIR/all.json. The GPU
benchmark runs at full and quick size only where CUDA is available (reported as skipped elsewhere);
--smallest runs its CPU smoke.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback
from pathlib import Path

from simsearch.benchmarks.common import header, write_json
from simsearch.config import default_config_path

__all__ = ["BENCHMARKS", "PRESETS", "main"]

CONFIGS = default_config_path().parent
BENCHMARKS = ("rerank", "extract", "train_step", "index", "million", "gpu")
#: Benchmarks that need a CUDA GPU unless run with --smoke.
GPU_ONLY = ("gpu",)

#: Arguments of each benchmark per preset; full size is each module's defaults plus these.
PRESETS: dict[str, dict[str, list[str]]] = {
    "full": {
        "rerank": ["--sizes", "1000", "5000", "10000", "--big-ng", "100000"],
        "extract": [],
        "train_step": [],
        "index": [],
        "million": [],
        "gpu": [],
    },
    "quick": {
        "rerank": ["--nq", "2000", "--ng", "2000", "--dense-nq", "300", "--dense-ng", "300",
                   "--sizes", "1000", "--big-nq", "1000", "--big-ng", "10000"],
        "extract": ["--images", "16", "--batch-size", "8"],
        "train_step": ["--steps", "3", "train.batch_p=8", "train.batch_k=4", "data.image_size=96"],
        "index": ["--sizes", "20000", "--dim", "128", "--queries", "500", "--real-gallery", "256",
                  "--real-queries", "64", "--real-image-size", "160", "--single-seconds", "0.5"],
        "million": ["--queries", "1000", "--gallery", "100000", "--sample", "500", "--check-queries", "200",
                    "--check-gallery", "20000"],
        "gpu": ["--batches", "4", "--steps", "4", "--repeats", "2"],
    },
    "smallest": {
        "rerank": ["--nq", "60", "--ng", "80", "--dim", "16", "--clusters", "10", "--dense-nq", "30",
                   "--dense-ng", "40", "--sizes", "50", "--repeats", "1"],
        "extract": ["--models", "timm:tf_efficientnet_lite0", "open_clip:ViT-Tiny-Test",
                    "--images", "8", "--batch-size", "8", "--image-size", "64", "--repeats", "1"],
        "train_step": ["--config", str(CONFIGS / "tiny_test.yaml"), "--steps", "1", "--repeats", "1"],
        "index": ["--sizes", "2000", "--dim", "32", "--queries", "50", "--real-gallery", "16",
                  "--real-queries", "8", "--real-image-size", "64", "--single", "20", "--repeats", "1"],
        "million": ["--queries", "20", "--gallery", "1000", "--dim", "16", "--index", "IVF8,Flat",
                    "--sample", "30", "--check-queries", "10", "--check-gallery", "500"],
        "gpu": ["--smoke"],
    },
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="run every simsearch benchmark")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="small sizes: a few minutes on 2 cores")
    size.add_argument("--smallest", action="store_true", help="tiny sizes: seconds (CI smoke)")
    p.add_argument("--only", nargs="+", choices=BENCHMARKS, default=list(BENCHMARKS))
    p.add_argument("--json", type=Path, default=None, help="folder for the JSON results")
    return p.parse_args(argv)


def run_one(name: str, argv: list[str]) -> tuple[float, str]:
    """Run one benchmark's main; a failure is reported and does not stop the others."""
    module = importlib.import_module(f"simsearch.benchmarks.{name}")
    start = time.perf_counter()
    try:
        code = module.main(argv)
        status = "ok" if code == 0 else f"exit {code}"
    except Exception as exc:  # report, keep going: one broken benchmark must not hide the rest
        traceback.print_exc()
        status = f"failed: {type(exc).__name__}: {exc}"
    print(flush=True)
    return time.perf_counter() - start, status


def skipped(name: str, argv: list[str]) -> str | None:
    """Why ``name`` is not run here (a GPU benchmark on a machine without CUDA), else None."""
    import torch

    if name in GPU_ONLY and "--smoke" not in argv and not torch.cuda.is_available():
        return "skipped: no CUDA GPU"
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    preset = "smallest" if args.smallest else "quick" if args.quick else "full"
    if args.json is not None:
        args.json.mkdir(parents=True, exist_ok=True)
    results = []
    start = time.perf_counter()
    for name in args.only:
        bench_argv = list(PRESETS[preset][name])
        if args.json is not None:
            bench_argv[:0] = ["--json", str(args.json / f"{name}.json")]  # before key=value args
        why = skipped(name, bench_argv)
        wall, status = (0.0, why) if why else run_one(name, bench_argv)
        results.append({"benchmark": name, "argv": bench_argv, "wall_s": wall, "status": status})
    total = time.perf_counter() - start

    print(header(f"All benchmarks ({preset})"))
    print("| benchmark | command | wall s | status |\n|---|---|---:|---|")
    for r in results:
        cmd = " ".join(["simsearch bench " + r["benchmark"], *r["argv"]])
        print(f"| {r['benchmark']} | `{cmd}` | {r['wall_s']:.1f} | {r['status']} |")
    print(f"\ntotal wall time: {total:.1f} s")
    if args.json is not None:
        write_json(args.json / "all.json", {"preset": preset, "results": results, "wall_s": total})
    return 0 if all(r["status"] == "ok" or r["status"].startswith("skipped") for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
