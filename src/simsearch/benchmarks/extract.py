"""Benchmark: the full embedding-extraction path vs the bare model forward.

    simsearch bench extract [--models timm:tf_efficientnet_lite0 open_clip:ViT-B-16]
        [--images 256] [--batch-size 64] [--workers 2] [--repeats 3] [--json OUT]

"Full" is what inference runs: ``simsearch.retrieval.embed.embed_dataset`` over a
``FlatImageDataset`` of real JPEGs (decode from disk, eval transforms, DataLoader with workers,
forward, L2 normalisation), a fresh DataLoader per call as in inference. "Bare" is the same
model's forward on a ready (B, 3, S, S) tensor, the same number of images in batches of the same
size. Both run in eval mode without gradients, after one untimed warm-up batch; files are read
once beforehand so the page cache, not the disk, serves them. Models are random-init (speed does
not depend on the weights). When the full path falls below 90% of bare, a profile times the
pieces: the loader alone (same workers, no model), decode and transform alone per image in one
process, and the full path without workers.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from simsearch.benchmarks.common import (
    check,
    fmt,
    header,
    machine_info,
    rate,
    scale,
    summarize,
    time_repeats,
    write_json,
)

__all__ = ["main", "jpeg_folder"]

DEFAULT_FOLDER = Path("/work/shared/data/caltech101/test/gallery")
DEFAULT_MODELS = ["timm:tf_efficientnet_lite0", "open_clip:ViT-B-16"]
TARGET = 0.9


def jpeg_folder(folder: Path, n: int, workdir: Path) -> tuple[Path, str]:
    """``folder`` when it holds images, else ``n`` generated 256x192 JPEGs in ``workdir``."""
    if folder.is_dir() and any(folder.glob("*.jpg")):
        return folder, f"real JPEGs from {folder}"
    from PIL import Image

    rng = np.random.default_rng(0)
    workdir.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        # smooth colour fields plus noise: compresses like a photo, unlike pure noise
        base = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        img = Image.fromarray(base).resize((256, 192), Image.BICUBIC)
        arr = np.asarray(img).astype(np.int16) + rng.integers(-20, 21, (192, 256, 3))
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(workdir / f"g_{i:05d}.jpg",
                                                                     quality=90)
    return workdir, f"generated JPEGs ({folder} not found)"


def build(spec: str, size: int | None) -> tuple[torch.nn.Module, Callable, int]:
    """Random-init EmbeddingModel of ``spec``, its eval transform and input size."""
    from simsearch.config import load
    from simsearch.data.transforms import eval_transform
    from simsearch.models import EmbeddingModel, create_backbone

    model = EmbeddingModel(create_backbone(spec, None)).eval()
    dc = model.data_config
    size = dc.input_size if model.backbone.is_vit or not size else size  # ViTs: fixed grid
    return model, eval_transform(load(overrides=[f"data.image_size={size}"]), dc), size


def bare_forward(model: torch.nn.Module, n: int, batch: int, size: int) -> None:
    """The model alone on a ready tensor: n images in batches of ``batch``."""
    x = torch.randn(batch, 3, size, size)
    with torch.no_grad():
        for _ in range(n // batch):
            model(x)


def profile(model: torch.nn.Module, ds: Dataset, n: int, args: argparse.Namespace,
            bare_s: dict) -> dict:
    """Where the time goes: loader alone, decode and transform per image, no-worker full path."""
    from simsearch.data import collate_skip_bad, load_image
    from simsearch.retrieval.embed import embed_dataset

    def loader_only() -> None:
        for _ in DataLoader(ds, batch_size=args.batch_size, num_workers=args.workers,
                            collate_fn=collate_skip_bad):
            pass

    base = ds.dataset if isinstance(ds, Subset) else ds
    paths = [base.samples[i].path for i in ds.indices] if isinstance(ds, Subset) else base.paths
    arrays = [np.array(load_image(p)) for p in paths[: args.batch_size]]
    decode = time_repeats(lambda: [np.array(load_image(p)) for p in paths[: args.batch_size]],
                          args.repeats, warmup=0)
    transform = time_repeats(lambda: [base.transform(a) for a in arrays], args.repeats, warmup=0)
    return {
        "loader_only_img_s": rate(n, time_repeats(loader_only, args.repeats, warmup=0)),
        "decode_ms_per_img": scale(decode, 1e3 / args.batch_size),
        "transform_ms_per_img": scale(transform, 1e3 / args.batch_size),
        "bare_ms_per_img": 1e3 * bare_s["median"] / n,
        "full_no_workers_img_s": rate(n, time_repeats(
            lambda: embed_dataset(model, ds, batch_size=args.batch_size, num_workers=0),
            args.repeats, warmup=0)),
    }


def run_model(spec: str, folder: Path, args: argparse.Namespace) -> dict:
    """Full and bare images/s for one model, interleaved so background load hits both alike."""
    from simsearch.data import FlatImageDataset
    from simsearch.retrieval.embed import embed_dataset

    model, transform, size = build(spec, args.image_size)
    full_ds = FlatImageDataset(folder, transform)
    n = min(args.images, len(full_ds)) // args.batch_size * args.batch_size
    if n == 0:
        raise ValueError(f"need at least --batch-size {args.batch_size} images, "
                         f"{folder} has {len(full_ds)}")
    ds = Subset(full_ds, range(n))
    for p in full_ds.paths[:n]:
        Path(p).read_bytes()  # page cache: measure decoding, not the disk
    bare_forward(model, args.batch_size, args.batch_size, size)  # warm-up
    embed_dataset(model, Subset(full_ds, range(args.batch_size)), batch_size=args.batch_size,
                  num_workers=args.workers)
    full_t, bare_t = [], []
    for _ in range(args.repeats):
        t = time.perf_counter()
        embed_dataset(model, ds, batch_size=args.batch_size, num_workers=args.workers)
        full_t.append(time.perf_counter() - t)
        t = time.perf_counter()
        bare_forward(model, n, args.batch_size, size)
        bare_t.append(time.perf_counter() - t)
    full_s, bare_s = summarize(full_t), summarize(bare_t)
    row = {"model": spec, "images": n, "batch_size": args.batch_size, "workers": args.workers,
           "image_size": size, "full_img_s": rate(n, full_s), "bare_img_s": rate(n, bare_s),
           "full_s": full_s, "bare_s": bare_s}
    row["ratio"] = row["full_img_s"]["median"] / row["bare_img_s"]["median"]
    if row["ratio"] < TARGET or args.profile:
        row["profile"] = profile(model, ds, n, args, bare_s)
    print(f"measured {spec}: {fmt(row['full_img_s'], 1)} vs {fmt(row['bare_img_s'], 1)} img/s",
          flush=True)
    return row


def profile_lines(row: dict, workers: int, cores: int) -> list[str]:
    """Where the time goes, from the profile's measurements only."""
    p = row["profile"]
    per_img = p["decode_ms_per_img"]["median"] + p["transform_ms_per_img"]["median"]
    no_workers = p["full_no_workers_img_s"]["median"]
    verdict = (f"- without workers the full path is faster ({no_workers:.1f} vs "
               f"{row['full_img_s']['median']:.1f} img/s): {workers} worker processes (started anew per "
               f"call) plus torch's {cores} threads oversubscribe {cores} cores; fewer workers "
               f"(data.num_workers) suit this machine"
               if no_workers > row["full_img_s"]["median"] else
               f"- workers help ({row['full_img_s']['median']:.1f} vs {no_workers:.1f} img/s without)")
    return [
        f"\nProfile of {row['model']} (full path at {row['ratio']:.1%} of bare):",
        f"- loader alone ({workers} workers, decode + transform + collate, no model): "
        f"{fmt(p['loader_only_img_s'], 1)} img/s",
        f"- in one process, per image: decode {fmt(p['decode_ms_per_img'])} ms, "
        f"eval transform {fmt(p['transform_ms_per_img'])} ms; bare forward "
        f"{p['bare_ms_per_img']:.2f} ms (wall, {cores} cores)",
        f"- full path without workers (all of it in sequence): {fmt(p['full_no_workers_img_s'], 1)} img/s",
        f"- loader CPU work is {per_img:.2f} ms per image = {per_img / p['bare_ms_per_img']:.1%} of the "
        f"bare forward's wall time per image; on a CPU-only machine the workers take their cores "
        f"from the forward's threads, so this work cannot hide behind the forward as it does "
        f"behind a GPU.",
        verdict,
    ]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="extraction pipeline vs bare forward benchmark")
    p.add_argument("--models", nargs="+", default=DEFAULT_MODELS, help="backbone specs")
    p.add_argument("--folder", type=Path, default=DEFAULT_FOLDER, help="flat folder of JPEGs")
    p.add_argument("--images", type=int, default=256, help="images per measurement "
                   "(rounded down to whole batches)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of the full path")
    p.add_argument("--image-size", type=int, default=None,
                   help="input side of CNNs (default: the model's own; ViTs keep their own)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--profile", action="store_true", help="profile even when the target is met")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    info = machine_info()
    size_note = f"{args.image_size}px" if args.image_size else "each model's own size"
    with tempfile.TemporaryDirectory() as tmp:
        folder, source = jpeg_folder(args.folder, max(args.images, args.batch_size), Path(tmp))
        print(header("Extraction: full path vs bare forward", info, [
            f"Images: {source}; input {size_note}, batch {args.batch_size}, {args.workers} "
            f"workers, random-init weights; repeats: {args.repeats}, interleaved"]), flush=True)
        rows = [run_model(spec, folder, args) for spec in args.models]
    lines = ["| model | input px | images | full path img/s, median (min–max) | bare forward img/s "
             "| full / bare |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['image_size']} | {r['images']} | {fmt(r['full_img_s'], 1)} "
                     f"| {fmt(r['bare_img_s'], 1)} | {r['ratio']:.1%} |")
    print("\n".join(lines))
    print("\nTarget: full path >= 90% of bare images/s")
    for r in rows:
        print(check(r["model"], r["ratio"] >= TARGET, f"{r['ratio']:.1%}", ">= 90%"))
    for r in rows:
        if "profile" in r:
            print("\n".join(profile_lines(r, args.workers, info["cores"])))
    if args.json is not None:
        write_json(args.json, {"rows": rows, "source": source, "machine": info, "args": vars(args)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
