"""Benchmark: GPU figures of the headline model, extraction and training step, each against a bare loop.

    simsearch bench gpu [--batch-size 256] [--batches 10] [--steps 10] [--repeats 3] [--json OUT]
        [key=value ...]
    simsearch bench gpu --smoke        # tiny model, a few images, 2 steps: runs on CPU (CI)

The model is built as users build it: ``simsearch.models.build_model`` from
``config.load(["vit_l14_circle"], ...)`` (OpenCLIP ViT-L/14, GeM, identity head, Circle loss, P-K
32x4), random-init (``model.pretrained=null``: speed does not depend on the weights), bf16
(``train.mixed_precision=bf16``). In one run:

- extraction at the backbone's own size (224 px): ``retrieval.embed.embed_batch`` under the bf16
  Accelerator's autocast (as validation embeds) on a batch already on the device;
  ``embed_dataset`` over ready tensors in host memory (DataLoader without workers, copy to the
  device, read-back as NumPy: JPEG decoding is ``simsearch bench extract``'s subject); and
  and ``embed_dataset`` as ``simsearch infer`` runs it (``inference.predict.make_accelerator`` and
  ``infer.precision: auto``: bf16 on GPUs that have it). Against the bare ``model(x)`` under
  ``torch.autocast`` bf16 and ``torch.inference_mode``, same batch, input on the device.
- the training step: ``training.engine.train_one_epoch`` set up as ``fit`` sets it up
  (``simsearch bench train_step``'s ``ours``: P-K loader over ready host tensors, miner, Circle
  loss, LLRD AdamW, schedule, clipping, Accelerate bf16, tqdm, loss read-back) against a bare
  forward (bf16 autocast) + Circle loss + backward + AdamW step on P-K batches already on the device.

Every loop gets one untimed warm-up repeat, then ``--repeats`` timed ones; the device is
synchronised before each clock read. Peak GPU memory (``torch.cuda.max_memory_allocated``, reset
before each loop) includes that loop's model copy. Without a CUDA GPU only ``--smoke`` runs:
ViT-L/14 on a CPU would take hours.
"""

from __future__ import annotations

import argparse
import copy
import gc
import itertools
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from simsearch.benchmarks.common import GIB, check, fmt, header, machine_info, rate, time_repeats, write_json

__all__ = ["main", "measure"]

DEFAULT_CONFIG = "vit_l14_circle"
FIXED = ["model.pretrained=null", "train.mixed_precision=bf16", "train.log_with=none"]
SMOKE = ["model.backbone=open_clip:ViT-Tiny-Test"]
#: Sizes per mode: extraction batch, timed batches a repeat, training steps a repeat, repeats.
SIZES = {"full": {"batch_size": 256, "batches": 10, "steps": 10, "repeats": 3},
         "smoke": {"batch_size": 8, "batches": 2, "steps": 2, "repeats": 1}}
TARGET_IMG_S = 3000.0
TARGET_RATIO = 0.9
NO_GPU = ("simsearch bench gpu: no CUDA GPU here (torch.cuda.is_available() is False); the full run "
          "needs one (ViT-L/14 on a CPU would take hours). `simsearch bench gpu --smoke` runs the same "
          "code path with a tiny model on the CPU.")


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so a clock read after it counts all of it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn: Callable[[], Any], device: torch.device, count: int, repeats: int) -> dict[str, Any]:
    """Seconds per call of ``fn`` (``count`` items a call), its rate and peak GPU memory (None on CPU).

    One untimed warm-up call first; each call ends with a device synchronisation.
    """
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    seconds = time_repeats(lambda: (fn(), sync(device)), repeats, warmup=1)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return {"count": count, "seconds": seconds, "rate": rate(count, seconds), "peak_gpu_bytes": peak}


def extraction(cfg, master: torch.nn.Module, args: argparse.Namespace, device: torch.device) -> list[dict]:
    """Bare forward, embed_batch bf16, embed_dataset bf16 and the infer path images/s."""
    from simsearch.benchmarks.train_step import ReadyImages
    from simsearch.inference.predict import make_accelerator
    from simsearch.retrieval.embed import embed_batch, embed_dataset
    from simsearch.training.engine import build_accelerator

    model = copy.deepcopy(master).to(device).eval()
    size, b, nb = model.data_config.input_size, args.batch_size, args.batches
    x = torch.randn(b, 3, size, size, generator=torch.Generator().manual_seed(args.seed)).to(device)
    host = ReadyImages(b * nb, 1, size, args.seed)

    def bare() -> None:
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16):
            for _ in range(nb):
                model(x)

    def batches(accelerator) -> Callable[[], None]:
        def run() -> None:
            for _ in range(nb):
                with accelerator.autocast():  # as embed_dataset wraps embed_batch
                    embed_batch(model, x)
        return run

    bf16 = build_accelerator(cfg)
    loops = [("bare", "bare `model(x)`: torch.autocast bf16, inference_mode, input on the device", bare),
             ("embed_batch", "`embed_batch`, bf16 (Accelerator autocast), input on the device", batches(bf16)),
             ("embed_dataset", "`embed_dataset`, bf16: ready host tensors, DataLoader (0 workers), copy to "
              "the device, NumPy out",
              lambda: embed_dataset(model, host, bf16, batch_size=b, num_workers=0, desc="embed_dataset"))]
    rows = [{"part": "extraction", "key": key, "loop": text, "batch": b, "unit": "img/s",
             **measure(fn, device, b * nb, args.repeats)} for key, text, fn in loops]
    # last: make_accelerator resets Accelerate's process-wide state, the bf16 Accelerator's too
    infer_acc = make_accelerator(cfg)
    rows.append({"part": "extraction", "key": "embed_infer", "batch": b, "unit": "img/s",
                 "loop": f"`embed_dataset` as `simsearch infer` runs it (infer.precision={cfg.infer.precision}): "
                         "ready host tensors, copy to the device, NumPy out",
                 **measure(lambda: embed_dataset(model, host, infer_acc, batch_size=b, num_workers=0, desc="infer",
                                                 precision=cfg.infer.precision),
                           device, b * nb, args.repeats)})
    return rows


def bare_training(cfg, master: torch.nn.Module, args: argparse.Namespace, device: torch.device) -> dict:
    """Forward (bf16 autocast) + Circle loss + backward + AdamW on P-K batches already on the device."""
    from pytorch_metric_learning import distances, losses

    model = copy.deepcopy(master).to(device).train()
    p, k, size = cfg.train.batch_p, cfg.train.batch_k, master.data_config.input_size
    gen = torch.Generator().manual_seed(args.seed)
    images = [torch.randn(p * k, 3, size, size, generator=gen).to(device) for _ in range(2)]
    labels = torch.arange(p, device=device).repeat_interleave(k)
    loss_fn = losses.CircleLoss(m=cfg.loss.circle_m, gamma=cfg.loss.circle_gamma,
                                distance=distances.CosineSimilarity())
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)

    def run() -> None:
        for i in range(args.steps):
            with torch.autocast(device.type, dtype=torch.bfloat16):
                emb = model(images[i % 2])
            loss = loss_fn(emb.float(), labels)  # fp32 outside autocast, as Accelerate hands it to the loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    return {"part": "training", "key": "bare", "batch": p * k, "unit": "samples/s",
            "loop": f"bare forward (torch.autocast bf16) + {cfg.loss.name} loss + backward + AdamW, "
                    "batches on the device", **measure(run, device, args.steps * p * k, args.repeats)}


def package_training(cfg, master: torch.nn.Module, args: argparse.Namespace, device: torch.device) -> dict:
    """``train_one_epoch`` as ``fit`` sets it up (``bench train_step``'s ``ours``), over ready host tensors."""
    from simsearch.benchmarks.train_step import ReadyImages, ours

    p, k = cfg.train.batch_p, cfg.train.batch_k
    ds = ReadyImages(p * (args.steps + 1), k, master.data_config.input_size, args.seed)  # epoch > a repeat
    run = ours(cfg, cfg, copy.deepcopy(master), ds, args.steps * (args.repeats + 1))
    epochs = itertools.count(1)
    return {"part": "training", "key": "train_one_epoch", "batch": p * k, "unit": "samples/s",
            "loop": f"`train_one_epoch`: P-K loader (ready host tensors), miner {cfg.loss.miner}, "
                    f"{cfg.loss.name} loss, LLRD AdamW, schedule, clip, Accelerate bf16, tqdm, loss.item()",
            **measure(lambda: run(next(epochs)), device, args.steps * p * k, args.repeats)}


def with_ratios(rows: list[dict]) -> list[dict]:
    """Each row's median rate over its part's bare median (the bare row: 1.0)."""
    bare = {r["part"]: r["rate"]["median"] for r in rows if r["key"] == "bare"}
    return [{**r, "ratio": r["rate"]["median"] / bare[r["part"]]} for r in rows]


def table(rows: list[dict]) -> str:
    lines = ["| part | loop | batch | rate, median (min–max) | / bare | peak GPU memory GiB |",
             "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        peak = "–" if r["peak_gpu_bytes"] is None else f"{r['peak_gpu_bytes'] / GIB:.2f}"
        lines.append(f"| {r['part']} | {r['loop']} | {r['batch']} | {fmt(r['rate'], 1)} {r['unit']} "
                     f"| {r['ratio']:.1%} | {peak} |")
    return "\n".join(lines)


def checks(rows: list[dict]) -> list[dict]:
    """The issue's bars: bf16 extraction >= 3,000 img/s and >= 90% of bare; training >= 90% of bare."""
    by = {(r["part"], r["key"]): r for r in rows}
    out = []
    for key in ("embed_batch", "embed_dataset", "embed_infer"):
        r = by["extraction", key]
        out.append({"name": f"extraction {key} bf16 >= {TARGET_IMG_S:,.0f} img/s",
                    "ok": r["rate"]["median"] >= TARGET_IMG_S, "measured": f"{r['rate']['median']:,.0f} img/s",
                    "target": f">= {TARGET_IMG_S:,.0f} img/s"})
        out.append({"name": f"extraction {key} >= 90% of bare", "ok": r["ratio"] >= TARGET_RATIO,
                    "measured": f"{r['ratio']:.1%}", "target": ">= 90%"})
    r = by["training", "train_one_epoch"]
    out.append({"name": "training train_one_epoch >= 90% of bare", "ok": r["ratio"] >= TARGET_RATIO,
                "measured": f"{r['ratio']:.1%}", "target": ">= 90%"})
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="GPU figures: ViT-L/14 bf16 extraction and P-K training step "
                                "against bare loops")
    p.add_argument("--smoke", action="store_true", help="tiny model, a few images, 2 steps; runs on CPU")
    p.add_argument("--config", default=DEFAULT_CONFIG, help="experiment config (name or path)")
    p.add_argument("--batch-size", type=int, default=None, help="extraction batch (default 256; smoke 8)")
    p.add_argument("--batches", type=int, default=None, help="extraction batches a repeat (default 10; smoke 2)")
    p.add_argument("--steps", type=int, default=None, help="training steps a repeat (default 10; smoke 2)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats of each loop (default 3; smoke 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("overrides", nargs="*", help="config overrides key=value (e.g. train.batch_p=16)")
    args = p.parse_args(argv)
    for key, value in SIZES["smoke" if args.smoke else "full"].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
        if getattr(args, key) < 1:
            p.error(f"--{key.replace('_', '-')} must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    from simsearch.config import load
    from simsearch.models import build_model

    args = parse_args(argv)
    if not args.smoke and not torch.cuda.is_available():
        print(NO_GPU, file=sys.stderr)
        return 2
    start = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = load([args.config], [*FIXED, *(SMOKE if args.smoke else []), *args.overrides,
                               f"seed={args.seed}", f"train.max_steps_per_epoch={args.steps}"])
    torch.manual_seed(args.seed)
    master = build_model(cfg)
    size, p, k = master.data_config.input_size, cfg.train.batch_p, cfg.train.batch_k
    info = machine_info()
    print(header("GPU figures: extraction and training step against bare loops", info, [
        f"Model {cfg.model.backbone} (random init) at {size}px on {device.type}"
        f"{' (--smoke)' if args.smoke else ''}, config {args.config}, bf16; extraction batch "
        f"{args.batch_size} x {args.batches} a repeat; training P x K = {p} x {k} = {p * k}, {args.steps} "
        f"steps a repeat; 1 untimed warm-up repeat, then {args.repeats} timed, each loop in turn"]), flush=True)

    rows = extraction(cfg, master, args, device)
    rows.append(bare_training(cfg, master, args, device))
    rows.append(package_training(cfg, master, args, device))
    rows = with_ratios(rows)
    wall = time.perf_counter() - start
    print(table(rows))
    results = checks(rows)
    if args.smoke:
        print("\nTargets (>= 3,000 img/s, >= 90% of bare) apply to the full run on a GPU; --smoke only "
              "runs the code path.")
    else:
        print("\nTargets:")
        print("\n".join(check(c["name"], c["ok"], c["measured"], c["target"]) for c in results))
    print(f"\nwall time: {wall:.1f} s")
    if args.json is not None:
        write_json(args.json, {"rows": rows, "checks": results, "smoke": args.smoke, "device": str(device),
                               "image_size": size, "wall_s": wall, "machine": info, "args": vars(args)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
