"""Benchmark: samples/s of our training step vs a minimal plain-PyTorch loop.

    simsearch bench train_step [--config configs/effnet_lite0_offline.yaml] [--steps 5]
        [--repeats 3] [--json OUT] [key=value ...]

Ours is ``simsearch.training.engine.train_one_epoch`` as ``fit`` sets it up: P-K sampler, the config's
loss (Circle) with the MultiSimilarity miner switched on, AdamW over layer-wise LR-decay groups,
the warm-up cosine schedule, gradient clipping (``train.clip_grad``), Accelerate on CPU with
mixed precision off, a progress bar and a loss read-back every step. The plain loop has the same
model (same initial weights), the same batches from the same loader and the same Circle loss,
with one AdamW group and nothing else: forward, loss, zero_grad, backward, step.

Both read ready tensors (random images already at the input size, P-K batched by our sampler and
collated by ``collate_skip_bad``, no workers), so JPEG decoding and augmentation are out of both
figures: the extraction benchmark measures those. Weights are random (``model.pretrained=null``);
speed does not depend on them. One untimed warm-up step each, then repeats interleaved.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from simsearch.benchmarks.common import (
    check,
    fmt,
    header,
    machine_info,
    rate,
    summarize,
    time_repeats,
    write_json,
)
from simsearch.config import default_config_path

__all__ = ["main", "ReadyImages"]

CONFIGS = default_config_path().parent
DEFAULT_CONFIG = CONFIGS / "effnet_lite0_offline.yaml"
FIXED = ["model.pretrained=null", "train.cpu=true", "train.mixed_precision='no'"]
TARGET = 0.9


class ReadyImages(Dataset):
    """Pre-made normalised image tensors, ``per_class`` per label: a loader with no decoding."""

    def __init__(self, n_classes: int, per_class: int, size: int, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        n = n_classes * per_class
        self.images = torch.randn(n, 3, size, size, generator=gen)
        self.labels = [i // per_class for i in range(n)]
        self.samples = [(f"ready_{i}", label) for i, label in enumerate(self.labels)]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        return self.images[i], self.labels[i], i


def _loader(ds: ReadyImages, cfg) -> tuple[DataLoader, object]:
    from simsearch.data import PKSampler, collate_skip_bad

    sampler = PKSampler(ds.labels, cfg.train.batch_p, cfg.train.batch_k, seed=cfg.seed)
    return DataLoader(ds, batch_sampler=sampler, num_workers=0, collate_fn=collate_skip_bad), sampler


def ours(cfg, warm_cfg, model: torch.nn.Module, ds: ReadyImages, total_steps: int):
    """Our step, set up as ``engine.fit`` does; returns run(epoch, warm) -> None."""
    from simsearch.training.engine import TrainState, build_accelerator, train_one_epoch
    from simsearch.training.losses import LossWrapper, build_loss, build_miner
    from simsearch.training.optim import build_optimizer, build_scheduler

    accelerator = build_accelerator(cfg)
    loader, sampler = _loader(ds, cfg)
    loss_fn = LossWrapper(build_loss(cfg, ds.labels[-1] + 1, model.embed_dim), build_miner(cfg),
                          cfg.train.miner_start_epoch)
    loss_fn.set_epoch(cfg.train.miner_start_epoch)  # miner on, as in most of a run
    optimizer = build_optimizer(model, loss_fn, cfg.train.lr, cfg.train.llrd, cfg.train.weight_decay)
    scheduler = build_scheduler(optimizer, total_steps, cfg.train.warmup_frac, cfg.train.lr,
                                cfg.train.min_lr)
    model, optimizer = accelerator.prepare(model, optimizer)
    loss_fn = loss_fn.to(accelerator.device)

    def run(epoch: int, warm: bool = False) -> None:
        sampler.set_epoch(epoch)
        train_one_epoch(model, loss_fn, optimizer, scheduler, loader, sampler, accelerator,
                        warm_cfg if warm else cfg, TrainState(epoch=epoch))

    return run


def plain(cfg, model: torch.nn.Module, ds: ReadyImages, steps: int):
    """The minimal loop: same model, batches and Circle loss; one AdamW group, nothing else."""
    from pytorch_metric_learning import distances, losses

    loader, sampler = _loader(ds, cfg)
    loss_fn = losses.CircleLoss(m=cfg.loss.circle_m, gamma=cfg.loss.circle_gamma,
                                distance=distances.CosineSimilarity())
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr,
                                  weight_decay=cfg.train.weight_decay)

    def run(epoch: int, warm: bool = False) -> None:
        sampler.set_epoch(epoch)
        model.train()
        for images, labels, _, _ in itertools.islice(loader, 1 if warm else steps):
            loss = loss_fn(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    return run


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="training step vs plain PyTorch loop benchmark")
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="experiment YAML")
    p.add_argument("--steps", type=int, default=5, help="timed steps per repeat")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("overrides", nargs="*", help="config overrides key=value (e.g. train.batch_p=8)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from simsearch.config import load
    from simsearch.models import build_model

    args = parse_args(argv)
    base = [*FIXED, *args.overrides, f"seed={args.seed}"]
    cfg = load([args.config], [*base, f"train.max_steps_per_epoch={args.steps}"])
    warm_cfg = load([args.config], [*base, "train.max_steps_per_epoch=1"])
    torch.manual_seed(args.seed)
    model = build_model(cfg)
    size = model.data_config.input_size if model.backbone.is_vit else (
        cfg.data.image_size or model.data_config.input_size)
    p, k = cfg.train.batch_p, cfg.train.batch_k
    ds = ReadyImages(p * (args.steps + 1), k, size, args.seed)  # an epoch longer than a repeat
    info = machine_info()
    print(header("Training step: ours vs plain PyTorch", info, [
        f"Model {cfg.model.backbone} (random init) at {size}px, batch P x K = {p} x {k} = {p * k}, "
        f"loss {cfg.loss.name}, miner {cfg.loss.miner}, LLRD {cfg.train.llrd}, clip_grad "
        f"{cfg.train.clip_grad}, AMP off; {args.steps} steps per repeat, repeats: {args.repeats}, "
        f"interleaved; config {args.config.name}"]), flush=True)

    runners = {"ours": ours(cfg, warm_cfg, copy.deepcopy(model), ds, args.steps * (args.repeats + 1) + 1),
               "plain": plain(cfg, copy.deepcopy(model), ds, args.steps)}
    times: dict[str, list[float]] = {name: [] for name in runners}
    for run in runners.values():
        run(0, warm=True)
    for r in range(args.repeats):
        for name, run in runners.items():
            t = time.perf_counter()
            run(r + 1)
            times[name].append(time.perf_counter() - t)
    loader, sampler = _loader(ds, cfg)
    loader_s = time_repeats(lambda: list(itertools.islice(loader, args.steps)), args.repeats, warmup=0)

    samples = args.steps * p * k
    res = {name: rate(samples, summarize(t)) for name, t in times.items()}
    res["loader"] = rate(samples, loader_s)
    ratio = res["ours"]["median"] / res["plain"]["median"]
    print("| loop | includes | samples/s, median (min–max) |\n|---|---|---:|")
    print(f"| ours | P-K loader, miner, {cfg.loss.name} loss, LLRD AdamW, schedule, clip, Accelerate, "
          f"tqdm, loss.item() | {fmt(res['ours'], 1)} |")
    print(f"| plain | P-K loader, {cfg.loss.name} loss, AdamW | {fmt(res['plain'], 1)} |")
    print(f"| loader alone | P-K sampler + collate of ready tensors | {fmt(res['loader'], 0)} |")
    print(f"\nours / plain = {ratio:.1%}")
    print(check("ours >= 90% of plain", ratio >= TARGET, f"{ratio:.1%}", ">= 90%"))
    if args.json is not None:
        write_json(args.json, {"samples_per_s": res, "ratio": ratio, "image_size": size,
                               "batch": p * k, "machine": info, "args": vars(args)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
