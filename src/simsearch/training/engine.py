"""Training: fit / train_one_epoch / evaluate over a Hugging Face Accelerator.

``fit`` reads like a recipe with signposts; each helper does one job. Everything a resumed run
needs (model, loss, optimizer, scheduler, scaler, sampler position, RNG) goes into ``last/``.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import logging.handlers
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import gather_object, is_mlflow_available, is_tensorboard_available, is_wandb_available
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader
from tqdm import tqdm

from simsearch.config import ConfigError, check_choice, check_number
from simsearch.config import save as save_config
from simsearch.data import (
    ImageDataset,
    ManifestSpec,
    drop_small_classes,
    read_manifest,
    scan_class_folders,
    split_train_val,
    stratified_subsample,
)
from simsearch.data.domains import check_domain_config
from simsearch.data.sampler import EpochBatchSampler
from simsearch.data.train_loader import build_train_dataset, build_train_loader
from simsearch.data.transforms import eval_transform
from simsearch.evaluation.metrics import retrieval_metrics_from_embeddings
from simsearch.models import EmbeddingModel, build_model
from simsearch.models import checkpoint as ckpt
from simsearch.models.model import count_parameters
from simsearch.retrieval.device import TRAIN_PRECISIONS, accelerate_precision, inference_device, resolve_precision
from simsearch.retrieval.embed import check_embedding_config, embed_dataset
from simsearch.training.curves import plot_curves
from simsearch.training.feature_cache import CACHE_DTYPES, FeatureCache, backbone_feature_shape, cache_bytes
from simsearch.training.losses import build_loss_wrapper, check_loss_config
from simsearch.training.optim import build_optimizer, build_scheduler
from simsearch.training.stages import Stage, apply_stage, describe_stage, parse_stages, stage_index
from simsearch.utils.errors import InputFileError
from simsearch.utils.fs import check_writable, write_bytes_atomic

__all__ = ["fit", "train_one_epoch", "evaluate", "build_accelerator", "check_train_config", "seed_everything"]

log = logging.getLogger("simsearch.train")
METRIC_FIELDS = ["epoch", "step", "loss", "lr", "images_per_s", "seconds", "r1", "r5", "map",
                 "miner"]
# train.log_with: the Accelerate tracker, the check that it is installed, the pip package that brings it
TRACKERS = {"tensorboard": (is_tensorboard_available, "tensorboard"), "wandb": (is_wandb_available, "wandb"),
            "mlflow": (is_mlflow_available, "mlflow")}


@dataclass
class TrainState:
    """Counters that, with the weights and RNG, make a run resumable exactly."""

    epoch: int = 0
    step: int = 0
    best: float = -math.inf
    bad_epochs: int = 0
    skipped: list[str] = field(default_factory=list)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_accelerator(cfg: DictConfig) -> Accelerator:
    # auto, the launch flag and a conflict between them: decided where inference decides (retrieval.device)
    precision = resolve_precision(cfg.train.mixed_precision, inference_device(cfg.train.cpu),
                                  key="train.mixed_precision", choices=TRAIN_PRECISIONS)
    mp = accelerate_precision(precision)
    # Accelerate keeps its settings in a process-wide singleton; a second run in the same
    # process (tests, notebooks) with another precision must start from a clean one.
    AcceleratorState._reset_state()
    return Accelerator(mixed_precision=mp, gradient_accumulation_steps=cfg.train.grad_accum,
                       cpu=cfg.train.cpu, log_with=tracker_name(cfg), project_dir=str(run_dir_of(cfg)))


def tracker_name(cfg: DictConfig) -> str | None:
    """``train.log_with`` as an Accelerate tracker name (None: none); one that is not installed is refused
    here, since Accelerate itself would only drop it with a warning."""
    name = cfg.train.log_with
    if name is None or name == "none":
        return None
    check_choice("train.log_with", name, (*TRACKERS, "none"))
    available, package = TRACKERS[name]
    if not available():
        raise ConfigError(f"train.log_with: {name} is not installed; pip install {package}, "
                          "or set train.log_with=none")
    return name


def _setup_logging(run_dir: Path, is_main: bool, hold: bool = False) -> None:
    """Log to the console and RUN/train.log; with ``hold`` (a resume not yet validated) the file's
    lines are kept in memory until :func:`_release_log`, so a failed resume leaves train.log as it was."""
    root = logging.getLogger("simsearch")
    root.setLevel(logging.INFO)
    root.propagate = False  # our handlers print it; no second copy through the root logger
    for h in list(root.handlers):
        if getattr(h, "_simsearch", False):
            root.removeHandler(h)
            h.close()
    if not is_main:
        root.setLevel(logging.WARNING)  # other ranks speak only to warn
        return
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    to_file = logging.FileHandler(run_dir / "train.log", delay=True)
    to_file.setFormatter(fmt)
    first: logging.Handler = to_file
    if hold:
        first = logging.handlers.MemoryHandler(1 << 20, flushLevel=logging.CRITICAL + 1, target=to_file,
                                               flushOnClose=False)
    for h in (first, logging.StreamHandler()):
        h.setFormatter(fmt)
        h._simsearch = True  # type: ignore[attr-defined]
        root.addHandler(h)


def _release_log(keep: bool = True) -> None:
    """Held log lines (see _setup_logging): ``keep`` writes them to train.log and logs straight to it
    from now on; otherwise (a failed resume) they are dropped, and train.log stays as it was."""
    root = logging.getLogger("simsearch")
    for h in list(root.handlers):
        if isinstance(h, logging.handlers.MemoryHandler) and getattr(h, "_simsearch", False):
            target = h.target
            if keep:
                h.flush()
            h.setTarget(None)  # logging.shutdown() flushes every handler: it must find nothing to write
            root.removeHandler(h)
            h.close()
            if keep:
                target._simsearch = True  # type: ignore[attr-defined]
                root.addHandler(target)
            else:
                target.close()


def load_samples(cfg: DictConfig) -> tuple[list, list, list[str]]:
    """Training samples from a folder or manifest, filtered, subsampled and split."""
    d = cfg.data
    if (d.train_dir is None) == (d.train_csv is None):
        raise ValueError("config: set exactly one of data.train_dir and data.train_csv")
    samples, classes = (scan_class_folders(d.train_dir) if d.train_dir is not None
                        else read_manifest(d.train_csv, ManifestSpec.from_config(d)))
    samples, classes = drop_small_classes(samples, classes, d.min_images_per_class)
    if d.sample_ratio < 1.0:
        samples = stratified_subsample(samples, d.sample_ratio, cfg.seed)
    train, val = split_train_val(samples, d.val_fraction, d.val_split, cfg.seed)
    log.info("data: %d classes, %d training and %d validation images", len(classes), len(train), len(val))
    return train, val, classes


def _loaders(cfg: DictConfig, model: EmbeddingModel, train: list, val: list,
             accelerator: Accelerator) -> tuple[DataLoader, EpochBatchSampler, ImageDataset | None]:
    dc = model.data_config
    size = cfg.data.image_size or dc.input_size
    # data.sampler (P-K or pairs) and data.domain_aug are decided in build_train_loader
    loader, sampler = build_train_loader(cfg, train, size, dc.mean, dc.std, accelerator.num_processes,
                                         accelerator.process_index, _worker_init)
    val_ds = ImageDataset(val, eval_transform(cfg, dc)) if val else None
    return loader, sampler, val_ds


def _worker_init(worker_id: int) -> None:
    # Derive Python's and NumPy's RNG from torch's per-worker seed, itself drawn from the main
    # process's torch RNG (ImageTransform reseeds albumentations the same way): restoring the
    # torch RNG on resume reproduces the augmentations.
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def _reseed_main_process_transform(loader: DataLoader) -> None:
    # Without workers the transform runs here; draw its seed from torch's RNG like a worker would.
    transform = getattr(loader.dataset, "transform", None)
    if loader.num_workers == 0 and hasattr(transform, "set_random_seed"):
        transform.set_random_seed(int(torch.randint(0, 2**31 - 1, (1,)).item()))


def _skip_batch(empty: bool, accelerator: Accelerator) -> bool:
    """Whether this step is skipped: its batch is empty on this rank or, under several processes, on any
    rank. They must agree: a rank that stepped alone would wait forever in DDP's gradient all-reduce
    (and in the embedding gather) for one that skipped. One small all-reduce per step, only then."""
    if accelerator.num_processes == 1:
        return empty
    flag = torch.tensor([float(empty)], device=accelerator.device)
    return bool(accelerator.reduce(flag, reduction="sum").item() > 0)


def train_one_epoch(model, loss_fn, optimizer, scheduler, loader, sampler, accelerator: Accelerator,
                    cfg: DictConfig, state: TrainState,
                    cache: FeatureCache | None = None) -> dict[str, float]:
    """One pass over the P-K batches; returns the mean loss, last LR and throughput. Every
    ``train.log_every`` steps the loss and LR go to the tracker (``accelerator.log``; none started, none sent).

    With ``cache`` (a leading stage that trains at most the top blocks) the same batches come from
    the cached features of the frozen part, and only the top blocks, pooling and the head run.
    """
    model.train()
    max_steps = cfg.train.max_steps_per_epoch
    total = min(len(sampler) - sampler.start_batch, max_steps or 1 << 62)
    bar = tqdm(total=total, desc=f"epoch {state.epoch}", disable=not accelerator.is_local_main_process,
               dynamic_ncols=True)
    t0, seen, losses = time.perf_counter(), 0, []
    batches = loader if cache is None else cache.batches(sampler, state.epoch)
    for i, (images, labels, _idx, bad) in enumerate(batches):
        if i >= total:
            break
        state.skipped.extend(loader.dataset.samples[int(j)][0] for j in bad)
        if _skip_batch(images.numel() == 0, accelerator):  # every image of a rank's batch was unreadable
            continue
        images = images.to(accelerator.device, non_blocking=True)
        labels = labels.to(accelerator.device)
        # compute losses
        with accelerator.accumulate(model):
            with accelerator.autocast():
                emb = model(images, features=cache is not None)
            loss = loss_fn(emb, labels)
            accelerator.backward(loss)
            if accelerator.sync_gradients and cfg.train.clip_grad:
                accelerator.clip_grad_norm_(list(model.parameters()) + list(loss_fn.parameters()),
                                            cfg.train.clip_grad)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if accelerator.sync_gradients:
                scheduler.step()
                state.step += 1
        seen += images.shape[0] * accelerator.num_processes
        losses.append(loss.detach().float().item())
        lr = scheduler.get_last_lr()[-1]
        ips = seen / max(time.perf_counter() - t0, 1e-9)
        bar.set_postfix(loss=f"{losses[-1]:.4f}", lr=f"{lr:.2e}", img_s=f"{ips:.1f}")
        bar.update(1)
        if state.step % cfg.train.log_every == 0:
            accelerator.log({"train/loss": losses[-1], "train/lr": lr}, step=state.step)
    bar.close()
    mean_loss = torch.tensor(float(np.mean(losses)) if losses else float("nan"), device=accelerator.device)
    mean_loss = accelerator.reduce(mean_loss, reduction="mean").item()
    return {"loss": mean_loss, "lr": scheduler.get_last_lr()[-1],
            "images_per_s": seen / max(time.perf_counter() - t0, 1e-9)}


@torch.no_grad()
def evaluate(model, val_ds: ImageDataset, accelerator: Accelerator, cfg: DictConfig,
             cache: FeatureCache | None = None) -> dict[str, float]:
    """R@1, R@5, mAP on the held-out images, each image querying all the others.

    With ``cache`` (everything below it frozen) the validation images' cached features are used.
    """
    net = accelerator.unwrap_model(model)
    if cache is not None and cache.val is not None:
        emb, ok = _embed_cached(net, cache.val, cache.val_ok, cfg.infer.batch_size, accelerator.device)
    else:
        emb, ok = embed_dataset(net, val_ds, accelerator, batch_size=cfg.infer.batch_size,
                                num_workers=cfg.data.num_workers, tta_flip=False)
    labels = np.array([s[1] for s in val_ds.samples])[ok]
    if len(labels) == len(np.unique(labels)):
        log.warning("validation skipped: no held-out image has another of its class to find")
        return {}
    return retrieval_metrics_from_embeddings(emb[ok], labels, emb[ok], labels, ks=(1, 5), exclude_self=True)


@torch.no_grad()
def _embed_cached(model, feats: torch.Tensor, ok: np.ndarray, batch_size: int,
                  device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    was_training = model.training
    model.eval()
    out = [model(feats[s:s + batch_size].float().to(device), features=True).float().cpu()
           for s in range(0, len(feats), batch_size)]
    model.train(was_training)
    return torch.cat(out).numpy(), ok


def _append_metrics(path: Path, row: dict[str, Any]) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=METRIC_FIELDS)
        if new:
            w.writeheader()
        w.writerow({k: row.get(k, "") for k in METRIC_FIELDS})


@dataclass
class Run:
    """Everything one training run holds, prepared for the Accelerator."""

    cfg: DictConfig
    accelerator: Accelerator
    run_dir: Path
    model: Any
    loss_fn: Any
    optimizer: Any
    scheduler: Any
    loader: DataLoader
    sampler: EpochBatchSampler
    val_ds: ImageDataset | None
    state: TrainState = field(default_factory=TrainState)
    curves: Path | None = None  # RUN/curves.png once this process has drawn it
    stages: list[Stage] = field(default_factory=list)
    stage: int = -1  # the stage the optimizer and scheduler belong to
    train_samples: list = field(default_factory=list)
    cache: FeatureCache | None = None  # backbone features, while the backbone stays frozen
    initial: dict[str, torch.Tensor] = field(default_factory=dict)  # the untrained weights (WiSE-FT)


def _train_state_dict(run: Run) -> dict:
    st = run.state
    out = {"epoch": st.epoch, "step": st.step, "best": st.best, "bad_epochs": st.bad_epochs, "stage": run.stage,
           "skipped": list(st.skipped), "optimizer": run.optimizer.state_dict(),
           "scheduler": run.scheduler.state_dict(), "sampler": run.sampler.state_dict(),
           "rng": ckpt.rng_state()}
    if run.accelerator.scaler is not None:
        out["scaler"] = run.accelerator.scaler.state_dict()
    xbm = run.accelerator.unwrap_model(run.loss_fn).xbm_position()
    if xbm is not None:
        out["xbm"] = xbm
    return out


def _restore(run: Run) -> None:
    """Continue from ``last/``: weights, optimizer, scheduler, scaler, sampler, RNG, counters.

    The weights are loaded first: ``last/`` must fit the model this config builds (same shapes),
    else the resume is refused naming the file, before anything in the run folder has changed.
    """
    last = run.run_dir / "last"
    ts = ckpt.load_train_state(last)
    unwrap = run.accelerator.unwrap_model
    fix = ("resume with the config the run was started with (its config.yaml), or start a new run "
           "(another run_name) for the changed model")
    ckpt.fit_weights(unwrap(run.model), ckpt.load_weights(last / "model.safetensors"),
                     last / "model.safetensors", fix)
    if (last / "loss.safetensors").exists():
        ckpt.fit_weights(unwrap(run.loss_fn), ckpt.load_weights(last / "loss.safetensors"),
                         last / "loss.safetensors", fix)
    st, state_file = run.state, last / "train_state.pt"
    try:
        st.epoch, st.step, st.best, st.bad_epochs = ts["epoch"], ts["step"], ts["best"], ts["bad_epochs"]
        st.skipped, stage = list(ts["skipped"]), int(ts.get("stage", 0))
    except (KeyError, TypeError, ValueError) as exc:
        raise InputFileError(state_file, f"is not a complete training state (no {exc})", fix) from exc
    if not 0 <= stage < len(run.stages):
        raise InputFileError(state_file, f"was saved in training stage {stage + 1}, but this config has "
                             f"{len(run.stages)} stage(s) (train.stages)", fix)
    if stage != run.stage:  # the saved optimizer belongs to that stage
        _enter_stage(run, stage)
    try:
        run.optimizer.load_state_dict(ts["optimizer"])
        run.scheduler.load_state_dict(ts["scheduler"])
        run.sampler.load_state_dict(ts["sampler"])
    except (KeyError, IndexError, TypeError, ValueError) as exc:  # torch: ValueError for other parameter groups
        raise InputFileError(state_file, f"does not fit this run ({type(exc).__name__}: {exc})", fix) from exc
    if run.accelerator.scaler is not None and "scaler" in ts:
        run.accelerator.scaler.load_state_dict(ts["scaler"])
    if "xbm" in ts:
        unwrap(run.loss_fn).set_xbm_position(ts["xbm"])
    ckpt.set_rng_state(ts["rng"])
    log.info("resumed from %s at epoch %d, step %d", last, st.epoch, st.step)


def run_dir_of(cfg: DictConfig) -> Path:
    return Path(cfg.train.output_dir) / cfg.run_name


def _start(cfg: DictConfig, resume: bool) -> tuple[Accelerator, Path]:
    """Accelerator, run folder (never clobbering a finished run), resolved config, logging.

    A resume writes nothing yet: ``fit`` records its config once ``last/`` has been loaded.
    """
    check_train_config(cfg)
    check_loss_config(cfg)  # sampler, loss and data must fit together: fail before any work
    check_domain_config(cfg.data)
    accelerator = build_accelerator(cfg)
    run_dir = run_dir_of(cfg)
    check_writable(run_dir, folder=True, what="the run folder (train.output_dir/run_name)")
    if resume:
        ckpt.train_state_path(run_dir / "last")  # nothing to resume: fail before any work
    elif (run_dir / "last").exists():
        raise FileExistsError(f"{run_dir} already holds a run; pass --resume to continue it, or "
                              "choose another train.output_dir or run_name")
    elif accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
    accelerator.wait_for_everyone()
    _setup_logging(run_dir, accelerator.is_main_process, hold=resume)
    log.info("simsearch %s, git %s, %d process(es), device %s, mixed precision %s", ckpt.__version__,
             ckpt.git_sha(), accelerator.num_processes, accelerator.device, accelerator.mixed_precision)
    return accelerator, run_dir


def check_train_config(cfg: DictConfig) -> None:
    """Range-check the counts, rates and choices of training, naming the key and the value."""
    t, d = cfg.train, cfg.data
    check_number("train.epochs", t.epochs, 0, why="0 saves the untrained model as the checkpoint")
    check_number("train.batch_p", t.batch_p, 1)
    check_number("train.batch_k", t.batch_k, 1)
    check_number("train.lr", t.lr, 0, low_open=True)
    check_number("train.min_lr", t.min_lr, 0)
    check_number("train.weight_decay", t.weight_decay, 0)
    check_number("train.llrd", t.llrd, 0, 1, low_open=True)
    check_number("train.warmup_frac", t.warmup_frac, 0, 1, high_open=True)
    check_number("train.miner_start_epoch", t.miner_start_epoch, 0)
    check_number("train.grad_accum", t.grad_accum, 1)
    check_number("train.clip_grad", t.clip_grad, 0, null_ok=True, why="0 or null = no clipping")
    check_number("train.early_stop_patience", t.early_stop_patience, 0, why="0 = never stop early")
    check_number("train.time_limit_min", t.time_limit_min, 0, low_open=True, null_ok=True)
    check_number("train.log_every", t.log_every, 1)
    check_number("train.max_steps_per_epoch", t.max_steps_per_epoch, 1, null_ok=True)
    check_number("train.feature_cache.views", t.feature_cache.views, 0, why="0 = no cache")
    check_number("train.feature_cache.max_gb", t.feature_cache.max_gb, 0, low_open=True)
    check_choice("train.best_metric", t.best_metric, ("r1", "r5", "map"))
    check_number("data.sample_ratio", d.sample_ratio, 0, 1, low_open=True)
    check_number("data.min_images_per_class", d.min_images_per_class, 1)
    check_number("data.val_fraction", d.val_fraction, 0, 1, high_open=True, why="0 = no validation")
    check_choice("data.val_split", d.val_split, ("image", "class"))
    check_choice("data.sampler", d.sampler, ("pk", "pairs"))
    check_number("data.pk_rounds", d.pk_rounds, 1, null_ok=True)
    check_number("data.pairs_per_batch", d.pairs_per_batch, 1, null_ok=True)
    check_number("data.pair_pos_ratio", d.pair_pos_ratio, 0, 1)
    check_number("data.train_scale_min", d.train_scale_min, 0, 1, low_open=True)
    check_number("data.color_jitter", d.color_jitter, 0)
    for key in ("hflip", "query_blur_p", "query_affine_p", "query_perspective_p"):
        check_number(f"data.{key}", d[key], 0, 1, why="a probability")
    check_number("model.embed_dim", cfg.model.embed_dim, 1, null_ok=True, why="null = the backbone's width")
    check_number("model.gem_p", cfg.model.gem_p, 0, low_open=True)
    check_number("model.dropout", cfg.model.dropout, 0, 1, high_open=True)
    check_embedding_config(cfg)


def _prepare(cfg: DictConfig, accelerator: Accelerator, run_dir: Path) -> Run:
    seed_everything(cfg.seed)
    # setup data and model
    train, val, classes = load_samples(cfg)
    check_wise(cfg, bool(val))
    model = build_model(cfg)
    loader, sampler, val_ds = _loaders(cfg, model, train, val, accelerator)
    loss_fn = build_loss_wrapper(cfg, len(classes), model.embed_dim)
    # setup optimizer and schedule (per stage of train.stages; one stage without them)
    run = Run(cfg, accelerator, run_dir, model, loss_fn, None, None, loader, sampler, val_ds,
              train_samples=train)
    if cfg.train.wise_alphas:  # the untrained weights, for weight-space ensembling after training
        run.initial = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    run.stages = parse_stages(cfg, model.backbone.num_layers)
    _enter_stage(run, 0)
    return run


def _enter_stage(run: Run, index: int) -> None:
    """Freeze per the stage, then a fresh AdamW and warm-up cosine schedule over its epochs."""
    acc, cfg, stage = run.accelerator, run.cfg, run.stages[index]
    model, loss_fn = acc.unwrap_model(run.model), acc.unwrap_model(run.loss_fn)
    if run.optimizer is not None:  # DDP must be rebuilt over the new set of trainable parameters
        acc.free_memory()
    apply_stage(model, stage)
    _update_cache(run, model, index)
    if index != run.stage:
        loss_fn.reset_memory()  # embeddings of another stage's model are no negatives for this one
    optimizer = build_optimizer(model, loss_fn, stage.lr, cfg.train.llrd, cfg.train.weight_decay,
                                backbone_lr=stage.backbone_lr)
    steps_per_epoch = min(len(run.sampler), cfg.train.max_steps_per_epoch or 1 << 62)
    total_steps = stage.epochs * math.ceil(steps_per_epoch / cfg.train.grad_accum)
    run.scheduler = build_scheduler(optimizer, total_steps, cfg.train.warmup_frac, stage.lr, cfg.train.min_lr)
    if any(p.requires_grad for p in loss_fn.parameters()):  # ArcFace: its centres sync like weights
        run.model, run.optimizer, run.loss_fn = acc.prepare(model, optimizer, loss_fn)
    else:
        run.model, run.optimizer = acc.prepare(model, optimizer)
        run.loss_fn = loss_fn.to(acc.device)
    run.stage = index
    trainable, total = count_parameters(model)
    if len(run.stages) > 1:
        log.info("stage %d/%d, %s", index + 1, len(run.stages), describe_stage(stage, model.backbone.num_layers))
    log.info("parameters: %s trainable of %s", f"{trainable:,}", f"{total:,}")


def cached_stages(stages: list[Stage], views: int, num_blocks: int) -> tuple[int, int]:
    """(how many leading stages train on cached features, how many top blocks run above the cache).

    The cache holds the output of the backbone below the highest block any of those stages
    unfreezes, so one cache serves them all: the head-only ones run the (frozen) top blocks
    over it, the others train them. It lasts while no stage trains what lies below it: the
    leading stages that unfreeze at most some blocks (not ``train: all``, nor the implicit stage).
    """
    if not views:
        return 0, 0
    n = 0
    while n < len(stages) and stages[n].unfreeze is not None and stages[n].unfreeze <= num_blocks:
        n += 1
    return n, max((s.unfreeze for s in stages[:n]), default=0)


def _update_cache(run: Run, model: EmbeddingModel, index: int) -> None:
    """Build the feature cache for the leading cached stages (once); drop it after them."""
    cfg = run.cfg
    views = cfg.train.feature_cache.views
    n_cached, top = cached_stages(run.stages, views, model.backbone.num_layers)
    if index >= n_cached:
        run.cache, model.cache_top = None, 0
        return
    if run.cache is not None:
        return
    if cfg.data.domain_aug:
        raise ConfigError("train.feature_cache.views: the feature cache does not support data.domain_aug "
                          "(per-domain transforms); set train.feature_cache.views=0")
    model.cache_top = top
    dtype = CACHE_DTYPES.get(cfg.train.feature_cache.dtype)
    if dtype is None:
        raise ConfigError(f"train.feature_cache.dtype: '{cfg.train.feature_cache.dtype}' must be one of "
                          f"{', '.join(CACHE_DTYPES)}")
    dc = model.data_config
    size = cfg.data.image_size or dc.input_size
    shape = backbone_feature_shape(model, size, run.accelerator.device)
    n_val = len(run.val_ds) if run.val_ds is not None else 0
    need = cache_bytes(views, len(run.train_samples), n_val, shape, dtype.itemsize)
    if need > cfg.train.feature_cache.max_gb * 1e9:
        raise ConfigError(f"train.feature_cache: {views} view(s) of {len(run.train_samples)} images of "
                          f"features {shape} need {need / 1e9:.1f} GB, over train.feature_cache.max_gb="
                          f"{cfg.train.feature_cache.max_gb}; lower train.feature_cache.views, raise max_gb, "
                          "or set views=0 (no cache)")
    sets = [ImageDataset(run.train_samples, eval_transform(cfg, dc))]
    for v in range(1, views):  # augmented views: the training pipeline, reseeded per view
        ds = build_train_dataset(cfg.data, run.train_samples, size, dc.mean, dc.std)
        ds.transform.set_random_seed(cfg.seed * 1000 + v)
        sets.append(ds)
    run.cache = FeatureCache.build(model, sets, run.val_ds, cfg.infer.batch_size, cfg.data.num_workers,
                                   run.accelerator.device, cfg.seed,
                                   show=run.accelerator.is_local_main_process, dtype=dtype)


def _baseline(run: Run) -> None:
    """Epoch -1: the untrained model's metrics; with zero epochs it is also the checkpoint."""
    row = {"epoch": -1, "step": 0}
    if run.val_ds is not None:
        row.update(evaluate(run.model, run.val_ds, run.accelerator, run.cfg, run.cache))
        log.info("before training: R@1 %.4f  R@5 %.4f  mAP %.4f", row["r1"], row["r5"], row["map"])
    if run.cfg.train.epochs == 0:
        _save_epoch(run, row, improved=True)
    elif run.accelerator.is_main_process:
        _append_metrics(run.run_dir / "metrics.csv", row)


def _epoch(run: Run) -> tuple[dict[str, Any], bool]:
    """Train one epoch, validate, checkpoint; returns the metrics row and whether it is best."""
    st, unwrap = run.state, run.accelerator.unwrap_model
    if stage_index(run.stages, st.epoch) != run.stage:
        _enter_stage(run, stage_index(run.stages, st.epoch))
    run.sampler.set_epoch(st.epoch)
    _reseed_main_process_transform(run.loader)
    unwrap(run.loss_fn).set_epoch(st.epoch)
    t0 = time.perf_counter()
    row = train_one_epoch(run.model, run.loss_fn, run.optimizer, run.scheduler, run.loader, run.sampler,
                          run.accelerator, run.cfg, st, cache=run.cache)
    row.update(epoch=st.epoch, step=st.step, miner=int(unwrap(run.loss_fn).miner_active))
    # evaluate and checkpoint
    if run.val_ds is not None:
        row.update(evaluate(run.model, run.val_ds, run.accelerator, run.cfg, run.cache))
    row["seconds"] = round(time.perf_counter() - t0, 3)
    improved = _bookkeeping(row, st, run.cfg)
    st.epoch += 1
    run.sampler.set_epoch(st.epoch)
    st.skipped = sorted(set(sum(gather_object([st.skipped]), [])))
    _save_epoch(run, row, improved)
    return row, improved


def fit(cfg: DictConfig, resume: bool = False) -> dict[str, Any]:
    """Train per ``cfg``; returns the best validation metrics and the run folder."""
    accelerator, run_dir = _start(cfg, resume)
    try:
        run = _prepare(cfg, accelerator, run_dir)
        if resume:
            _restore(run)  # refuses a last/ this config cannot continue, before the run folder changes
    except BaseException:
        _release_log(keep=False)
        raise
    if resume:
        if accelerator.is_main_process:
            save_config(cfg, run_dir / "config.yaml")
        _release_log()
    _init_trackers(run)
    if (cfg.train.eval_at_start or cfg.train.epochs == 0) and not resume:
        _baseline(run)
    best: dict[str, Any] = {}
    t_start, limit = time.perf_counter(), cfg.train.time_limit_min
    while run.state.epoch < cfg.train.epochs:
        row, improved = _epoch(run)
        best = dict(row) if improved else best
        if cfg.train.early_stop_patience and run.state.bad_epochs >= cfg.train.early_stop_patience:
            log.info("early stop: %s did not improve for %d epochs", cfg.train.best_metric,
                     run.state.bad_epochs)
            break
        if limit and time.perf_counter() - t_start > 60 * limit and run.state.epoch < cfg.train.epochs:
            log.info("time limit: %.1f min passed (train.time_limit_min=%g); stopping after epoch %d",
                     (time.perf_counter() - t_start) / 60, limit, run.state.epoch - 1)
            break
    if cfg.train.wise_alphas and cfg.train.epochs > 0:
        best = _wise(run) or best
    skipped = run.state.skipped
    if skipped:
        log.warning("skipped %d unreadable image(s): %s", len(skipped), ", ".join(skipped))
    else:
        log.info("skipped 0 unreadable images")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return {"run_dir": str(run_dir), "best": best, "skipped": list(skipped),
            "epochs_run": run.state.epoch, "is_main_process": accelerator.is_main_process}


def check_wise(cfg: DictConfig, has_val: bool) -> list[float]:
    """``train.wise_alphas`` as floats in [0, 1]; they need a validation split to choose from."""
    alphas = list(cfg.train.wise_alphas or [])
    for a in alphas:
        if isinstance(a, bool) or not isinstance(a, (int, float)) or not 0.0 <= a <= 1.0:
            raise ConfigError(f"train.wise_alphas: {a!r} must be a number in [0, 1] "
                              "(0 = the untrained weights, 1 = the fine-tuned ones)")
    if alphas and not has_val:
        raise ConfigError("train.wise_alphas chooses the mix on validation, but there is none; set "
                          "data.val_fraction > 0 or train.wise_alphas=[]")
    return [float(a) for a in alphas]


def mix_weights(initial: dict[str, torch.Tensor], tuned: dict[str, torch.Tensor],
                alpha: float) -> dict[str, torch.Tensor]:
    """WiSE-FT's weight-space ensemble (1 - alpha) * initial + alpha * tuned (Wortsman et al.,
    "Robust fine-tuning of zero-shot models", CVPR 2022); integer buffers come from ``tuned``."""
    return {k: ((1.0 - alpha) * initial[k].float() + alpha * v.float()).to(v.dtype)
            if v.is_floating_point() else v.clone() for k, v in tuned.items()}


def _wise(run: Run) -> dict[str, Any] | None:
    """Mix the untrained and the best weights for each alpha, validate, keep the best mix in best/.

    Fine-tuning on a few classes moves the features away from what the pretrained model knew
    about other classes; a partial step back along the weight path often keeps the gain on
    the training classes and restores it on unseen ones. The mix is chosen on validation
    (a class split for instance-level data), never on the test set.
    """
    acc, cfg = run.accelerator, run.cfg
    best_dir = run.run_dir / "best"
    meta = json.loads((best_dir / "meta.json").read_text())
    if "wise_alpha" in meta:  # a resumed run that had already chosen
        log.info("WiSE-FT: best/ already holds the alpha=%g mix", meta["wise_alpha"])
        return None
    tuned = ckpt.load_weights(best_dir / "model.safetensors")
    net, lossm = acc.unwrap_model(run.model), acc.unwrap_model(run.loss_fn)
    # only what lies above the cache trained: the cached features stay valid for every mix
    n_cached = cached_stages(run.stages, cfg.train.feature_cache.views, net.backbone.num_layers)[0]
    cache = run.cache if n_cached == len(run.stages) else None
    rows = []
    for alpha in check_wise(cfg, run.val_ds is not None):
        net.load_state_dict(mix_weights(run.initial, tuned, alpha))
        rows.append({"alpha": alpha, **evaluate(run.model, run.val_ds, acc, cfg, cache)})
        log.info("WiSE-FT alpha %.2f: R@1 %.4f  R@5 %.4f  mAP %.4f", alpha, rows[-1]["r1"], rows[-1]["r5"],
                 rows[-1]["map"])
    key = cfg.train.best_metric
    pick = max(rows, key=lambda r: r[key])  # the first of equal ones
    net.load_state_dict(mix_weights(run.initial, tuned, pick["alpha"]))
    acc.wait_for_everyone()
    if acc.is_main_process:
        _write_rows(run.run_dir / "wise.csv", rows)
        meta.update(wise_alpha=pick["alpha"], finetuned_metrics=meta.get("metrics", {}),
                    metrics={k: pick[k] for k in ("r1", "r5", "map")})
        ckpt.save_checkpoint(best_dir, net, lossm, cfg, meta)
    acc.wait_for_everyone()
    log.info("WiSE-FT: kept alpha %.2f in %s (validation %s %.4f)", pick["alpha"], best_dir, key, pick[key])
    return {"epoch": meta.get("epoch"), "wise_alpha": pick["alpha"], **{k: pick[k] for k in ("r1", "r5", "map")}}


def _write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    """The rows as CSV through the project's one atomic writer (the run owns this file)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    write_bytes_atomic(path, buf.getvalue().encode("utf-8"), force=True)


def _init_trackers(run: Run) -> None:
    """Start the ``train.log_with`` tracker on the main process (``accelerator.end_training`` ends it) with
    the resolved config as its hyperparameters: TensorBoard writes RUN/tb/, W&B and MLflow log a run named
    after run_name in the project / experiment ``simsearch`` (their environment variables may override)."""
    name = tracker_name(run.cfg)
    if name is None:
        return
    flat = {k: v if isinstance(v, (bool, int, float, str)) else json.dumps(v)
            for k, v in _flatten(OmegaConf.to_container(run.cfg, resolve=True)).items()}
    run.accelerator.init_trackers("tb" if name == "tensorboard" else "simsearch", config=flat,
                                  init_kwargs={"wandb": {"name": run.cfg.run_name, "dir": str(run.run_dir)},
                                               "mlflow": {"run_name": run.cfg.run_name}})
    log.info("experiment tracker: %s%s", name, f" ({run.run_dir / 'tb'})" if name == "tensorboard" else "")


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        out.update(_flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _draw_curves(run: Run) -> None:
    """Redraw RUN/curves.png from metrics.csv (main process); the first drawing is named in train.log.
    A plotting failure is logged, never fatal: the curves are a view of metrics.csv, which is written."""
    out = run.run_dir / "curves.png"
    try:
        plot_curves(run.run_dir / "metrics.csv", out)
    except Exception as exc:  # matplotlib raises many kinds; training must go on
        log.warning("could not draw %s: %s", out, exc)
        return
    if run.curves is None:
        run.curves = out
        log.info("loss and validation curves (redrawn each epoch): %s", out)


def _bookkeeping(row: dict, state: TrainState, cfg: DictConfig) -> bool:
    """Update best / patience; without validation the latest epoch counts as best."""
    key = cfg.train.best_metric
    if key not in row:
        log.info("epoch %d: loss %.4f", row["epoch"], row["loss"])
        return True
    log.info("epoch %d: loss %.4f  R@1 %.4f  R@5 %.4f  mAP %.4f", row["epoch"], row["loss"],
             row["r1"], row["r5"], row["map"])
    if row[key] > state.best:
        state.best, state.bad_epochs = row[key], 0
        return True
    state.bad_epochs += 1
    return False


def _save_epoch(run: Run, row: dict[str, Any], improved: bool) -> None:
    """Append the metrics row; write last/ (with training state) and, if improved, best/."""
    acc, st = run.accelerator, run.state
    acc.wait_for_everyone()
    if acc.is_main_process:
        _append_metrics(run.run_dir / "metrics.csv", row)
        _draw_curves(run)
        if "map" in row:
            acc.log({f"val/{k}": row[k] for k in ("r1", "r5", "map")}, step=st.step)
        net, lossm = acc.unwrap_model(run.model), acc.unwrap_model(run.loss_fn)
        meta = {"epoch": row["epoch"], "step": st.step,
                "metrics": {k: row[k] for k in ("r1", "r5", "map", "loss") if k in row},
                "parameters": dict(zip(("trainable", "total"), count_parameters(net)))}
        ckpt.save_checkpoint(run.run_dir / "last", net, lossm, run.cfg, meta, _train_state_dict(run))
        if improved:
            ckpt.save_checkpoint(run.run_dir / "best", net, lossm, run.cfg, meta)
    acc.wait_for_everyone()
