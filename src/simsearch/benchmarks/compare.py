"""Compare approaches on one competition: train each config (or take a finished run), evaluate all
of them the same way on the same test folders, and write one markdown table with advice.

The competition is laid out like ``../shared/data/caltech101`` and the demo's data:
``ROOT/training/<class>/*``, ``ROOT/test/query``, ``ROOT/test/gallery``,
``ROOT/test/ground_truth.json``. An approach is one or more config files joined by ``+`` and
optionally ``key=value`` overrides for that approach alone, e.g.
``configs/lora_clip.yaml+configs/tiny_test.yaml+data.image_size=null``.

Evaluation measures the models themselves: plain embeddings (no TTA), exact cosine search over
the whole gallery, no query expansion or re-ranking. ``simsearch infer --ablate`` shows what those
add for the approach chosen here.
"""
from __future__ import annotations

import csv
import json
import logging
import os
import platform
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from simsearch.config import load
from simsearch.evaluation.metrics import score_rankings
from simsearch.inference.folders import embed_folder, rankings_from_ids, search_readable
from simsearch.inference.submission import read_ground_truth
from simsearch.models.backbones import parse_backbone_name
from simsearch.models.checkpoint import load_model
from simsearch.retrieval.device import embedding_device, inference_device, place_model, requested_precision
from simsearch.retrieval.embed import embed_batch
from simsearch.retrieval.pipeline import RetrievalOptions
from simsearch.utils.fs import write_bytes_atomic

__all__ = ["Approach", "Competition", "compare", "parse_approach", "recommend", "table_markdown",
           "subset_competition"]

log = logging.getLogger("simsearch.benchmarks.compare")
PLAIN = RetrievalOptions(index="Flat", top_k=0, qe="none", dba_k=0, rerank=False)
CLEAR_MARGIN = 1.2  # a speed or training-time lead smaller than 20% is within the noise of a shared machine


@dataclass(frozen=True)
class Competition:
    """The folders every approach is trained and evaluated on."""

    train_dir: Path | None
    query_dir: Path
    gallery_dir: Path
    ground_truth: Path

    @classmethod
    def from_root(cls, root: str | Path, need_training: bool = True) -> "Competition":
        root = Path(root)
        comp = cls(root / "training" if need_training else None, root / "test" / "query",
                   root / "test" / "gallery", root / "test" / "ground_truth.json")
        for path in (comp.train_dir, comp.query_dir, comp.gallery_dir):
            if path is not None and not path.is_dir():
                raise FileNotFoundError(f"--data {root}: missing folder {path} (expected training/<class>/*, "
                                        "test/query, test/gallery, test/ground_truth.json)")
        if not comp.ground_truth.is_file():
            raise FileNotFoundError(f"--data {root}: missing {comp.ground_truth}")
        return comp


@dataclass
class Approach:
    """One row: config files and overrides to train, or a finished run's checkpoint to evaluate."""

    name: str
    files: list[Path] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)
    checkpoint: Path | None = None  # set for --runs, and after training


def parse_approach(spec: str) -> Approach:
    """``A.yaml+B.yaml+key=value``: files merged in order, then this approach's own overrides.

    The row (and run folder) is named after the files' stems, or by a ``run_name=NAME`` override.
    """
    parts = [p for p in spec.split("+") if p]
    files = [Path(p) for p in parts if "=" not in p]
    overrides = [p for p in parts if "=" in p]
    if not files:
        raise ValueError(f"--configs: '{spec}' names no config file")
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"--configs: config file not found: {f}")
    names = [o.split("=", 1)[1] for o in overrides if o.startswith("run_name=")]
    if names and not names[-1]:
        raise ValueError(f"--configs: '{spec}': run_name= needs a name")
    return Approach(names[-1] if names else "+".join(f.stem for f in files), files, overrides)


def run_approach(path: str | Path) -> Approach:
    """A finished run folder (holding best/) or a checkpoint folder itself."""
    path = Path(path)
    ckpt = path / "best" if (path / "best" / "model.safetensors").is_file() else path
    if not (ckpt / "model.safetensors").is_file():
        raise FileNotFoundError(f"--runs: {path} is neither a run folder with best/ nor a checkpoint folder")
    return Approach(path.name if ckpt != path else f"{path.parent.name}/{path.name}", checkpoint=ckpt)


def _unique_names(approaches: list[Approach]) -> None:
    seen: dict[str, int] = {}
    for a in approaches:
        seen[a.name] = seen.get(a.name, 0) + 1
        if seen[a.name] > 1:
            a.name = f"{a.name}-{seen[a.name]}"


def subset_competition(comp: Competition, out_dir: Path, max_queries: int | None, max_gallery: int | None,
                       seed: int = 0) -> Competition:
    """A seeded random subset of the test images (links, or copies) with the ground truth restricted to it.

    Queries left with no relevant gallery image are dropped; the result is the same for every approach.
    """
    gt = read_ground_truth(comp.ground_truth)
    rng = np.random.default_rng(seed)
    queries = sorted(gt)
    gallery = sorted(p.name for p in comp.gallery_dir.iterdir() if p.is_file())
    if max_gallery and max_gallery < len(gallery):
        gallery = sorted(rng.choice(gallery, max_gallery, replace=False).tolist())
    kept = set(gallery)
    sub_gt = {q: [g for g in gt[q] if g in kept] for q in queries}
    queries = [q for q in queries if sub_gt[q] and (comp.query_dir / q).is_file()]
    if max_queries and max_queries < len(queries):
        queries = sorted(rng.choice(queries, max_queries, replace=False).tolist())
    if not queries:
        raise ValueError(f"--max-gallery {max_gallery}: no query keeps a relevant gallery image")
    shutil.rmtree(out_dir, ignore_errors=True)
    for sub, names, src in (("query", queries, comp.query_dir), ("gallery", gallery, comp.gallery_dir)):
        (out_dir / sub).mkdir(parents=True)
        for name in names:
            _link_or_copy(src / name, out_dir / sub / name)
    (out_dir / "ground_truth.json").write_text(json.dumps({q: sub_gt[q] for q in queries}, indent=1))
    log.info("test subset: %d queries, %d gallery images in %s", len(queries), len(gallery), out_dir)
    return Competition(comp.train_dir, out_dir / "query", out_dir / "gallery", out_dir / "ground_truth.json")


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.symlink(src.resolve(), dst)
    except OSError:  # file systems without symlinks
        shutil.copy2(src, dst)


def _train(approach: Approach, comp: Competition, work: Path, overrides: Sequence[str], reuse: bool) -> DictConfig:
    """Train with the library's fit(); returns the resolved config. ``reuse``: keep a finished run."""
    from simsearch.training.engine import fit

    fixed = [f"data.train_dir={comp.train_dir}", f"train.output_dir={work}", f"run_name={approach.name}"]
    cfg = load(approach.files, [*fixed, *overrides, *approach.overrides])
    best = work / approach.name / "best"
    if reuse and (best / "model.safetensors").is_file():
        log.info("%s: reusing the finished run %s", approach.name, best.parent)
    else:
        log.info("%s: training (%s)", approach.name, " ".join([*map(str, approach.files), *approach.overrides]))
        fit(cfg)
    approach.checkpoint = best
    return cfg


def _training_seconds(run_dir: Path) -> float | None:
    """Sum of the epochs' seconds (training + validation) in the run's metrics.csv."""
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return None
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("seconds") and int(r["epoch"]) >= 0]
    return sum(float(r["seconds"]) for r in rows) if rows else None


def _random_init(cfg: DictConfig) -> bool:
    """Whether training started from random weights (no pretrained backbone)."""
    pretrained = cfg.model.pretrained
    kind, name, tag = parse_backbone_name(cfg.model.backbone)
    return (pretrained in (None, False) or (kind == "vae" and name == "tiny")
            or (kind == "open_clip" and pretrained == "default" and tag is None))


def _notes(approach: Approach, cfg: DictConfig) -> str:
    notes = []
    if _random_init(cfg):
        notes.append("random init: wiring only")
    if OmegaConf.select(cfg, "model.lora.enabled", default=False):
        notes.append(f"LoRA r{OmegaConf.select(cfg, 'model.lora.rank')}")
    stages = OmegaConf.select(cfg, "train.stages", default=None)
    if stages:
        notes.append(f"{len(stages)} stages")
    if OmegaConf.select(cfg, "data.sampler", default="pk") != "pk":
        notes.append(f"{OmegaConf.select(cfg, 'data.sampler')} sampler")
    notes += [o for o in approach.overrides if not o.startswith("run_name=")]
    return "; ".join(notes)


def _parameters(checkpoint: Path, model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) as training saw them (meta.json); else every parameter of the model."""
    meta_path = checkpoint / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    if "parameters" in meta:
        return int(meta["parameters"]["trainable"]), int(meta["parameters"]["total"])
    n = sum(p.numel() for p in model.parameters())
    return n, n


def evaluate_checkpoint(approach: Approach, cfg: DictConfig, comp: Competition,
                        gt: dict[str, list[str]]) -> dict[str, Any]:
    """Plain embeddings, exact cosine search over the whole gallery, scored like simsearch score, on the
    device and in the precision inference would use (``retrieval.device``)."""
    model, _ = load_model(approach.checkpoint)
    place_model(model, inference_device(cfg.train.cpu))
    size = int(cfg.data.image_size or model.data_config.input_size)
    # warm-up: thread pools and kernel selection for this shape stay out of img/s
    warm = torch.zeros(min(int(cfg.infer.batch_size), 8), 3, size, size, device=embedding_device(model))
    embed_batch(model, warm, precision=requested_precision(cfg))
    gallery = embed_folder(model, comp.gallery_dir, cfg, None, False, (1.0,), None, f"{approach.name} gallery")
    query = embed_folder(model, comp.query_dir, cfg, None, False, (1.0,), None, f"{approach.name} queries")
    ids = search_readable(query, gallery, PLAIN)  # refuses a gallery without a readable image
    m = score_rankings(rankings_from_ids(query, gallery, ids), gt, ks=(1, 5))
    n_images = int(query.ok.sum() + gallery.ok.sum())
    trainable, total = _parameters(approach.checkpoint, model)
    return {"approach": approach.name, "backbone": str(cfg.model.backbone), "input_size": size,
            "loss": str(cfg.loss.name),
            "r1": m["r1"], "r5": m["r5"], "p5": m["p5"], "map": m["map"],
            "train_s": _training_seconds(approach.checkpoint.parent),
            "images_per_s": n_images / max(query.seconds + gallery.seconds, 1e-9),
            "trainable": trainable, "total": total, "dim": int(query.emb.shape[1]),
            "random_init": _random_init(cfg), "notes": _notes(approach, cfg),
            "checkpoint": str(approach.checkpoint)}


def _millions(n: int) -> str:
    return f"{n / 1e6:.2f} M" if n >= 10_000 else f"{n:,}"


def table_markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| approach | backbone | px | loss | R@1 | R@5 | P@5 | mAP | training (s) | inference (img/s) "
             "| trainable params | total params | dim | notes |",
             "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        train = "–" if r["train_s"] is None else f"{r['train_s']:.0f}"
        lines.append(f"| {r['approach']} | `{r['backbone']}` | {r['input_size']} | {r['loss']} "
                     f"| {r['r1']:.4f} | {r['r5']:.4f} | {r['p5']:.4f} | {r['map']:.4f} | {train} "
                     f"| {r['images_per_s']:.1f} "
                     f"| {_millions(r['trainable'])} | {_millions(r['total'])} | {r['dim']} | {r['notes']} |")
    return "\n".join(lines) + "\n"


def _architecture(row: dict[str, Any]) -> tuple[str, int, int]:
    return row["backbone"], row["input_size"], row["dim"]


def recommend(rows: list[dict[str, Any]]) -> str:
    """When to choose which, from the measured numbers: best mAP, best R@1, fastest, fewest trainable.

    Speed and training time count only when they beat the best-mAP approach by ``CLEAR_MARGIN``, and
    speed only between different networks (backbone, input size, embedding dim).
    """
    pool = [r for r in rows if not r["random_init"]] or rows
    left_out = len(rows) - len(pool)
    best = max(pool, key=lambda r: (r["map"], r["r1"]))
    parts = [f"For the best ranking choose **{best['approach']}** (mAP {best['map']:.4f}, R@1 {best['r1']:.4f})"]
    top1 = max(pool, key=lambda r: (r["r1"], r["map"]))
    if top1["r1"] > best["r1"]:
        parts.append(f"for the best first hit **{top1['approach']}** (R@1 {top1['r1']:.4f})")
    # The same network at the same input size costs the same: a measured gap between such rows is noise.
    other_nets = [r for r in pool if _architecture(r) != _architecture(best)]
    fast = max(other_nets, key=lambda r: r["images_per_s"], default=None)
    if fast is not None and fast["images_per_s"] >= CLEAR_MARGIN * best["images_per_s"]:
        parts.append(f"when inference speed matters **{fast['approach']}** ({fast['images_per_s']:.1f} img/s, "
                     f"{fast['images_per_s'] / best['images_per_s']:.1f}x, mAP {fast['map'] - best['map']:+.4f})")
    lean = min(pool, key=lambda r: (r["trainable"], -r["map"]))
    if lean is not best and lean["trainable"] < best["trainable"]:
        parts.append(f"to train and store the fewest weights **{lean['approach']}** "
                     f"({_millions(lean['trainable'])} trainable of {_millions(lean['total'])}, "
                     f"mAP {lean['map'] - best['map']:+.4f})")
    timed = [r for r in pool if r["train_s"] is not None]
    quick = min(timed, key=lambda r: r["train_s"]) if timed else None
    slow = best["train_s"]
    if quick is not None and slow is not None and quick["train_s"] * CLEAR_MARGIN <= slow:
        parts.append(f"for the shortest training **{quick['approach']}** ({quick['train_s']:.0f} s against "
                     f"{best['train_s']:.0f} s)")
    text = parts[0] + ("; " + "; ".join(parts[1:]) if len(parts) > 1 else "") + "."
    if len(parts) == 1 and len(pool) > 1:
        text = (f"**{best['approach']}** is best on every measured axis here: mAP {best['map']:.4f}, "
                f"{best['images_per_s']:.1f} img/s, {_millions(best['trainable'])} trainable parameters.")
    if left_out:
        text += f" ({left_out} random-init row(s) are wiring checks and are left out of this advice.)"
    return text


def _report(rows: list[dict[str, Any]], data: Path, comp: Competition, n_queries: int, n_gallery: int,
            command: str | None) -> str:
    subset = f" (a seeded subset, in {comp.query_dir.parent})" if comp.query_dir.parent != data / "test" else ""
    head = [f"# Approach comparison on {data}", "",
            f"{n_queries} queries against {n_gallery} gallery images{subset}; every approach trained on "
            f"`{comp.train_dir}` with the library's `fit` (or taken from a finished run) and evaluated "
            "the same way: plain embeddings (no TTA), exact cosine search over the whole gallery, no "
            "query expansion or re-ranking. Training time is the sum of the epochs' seconds in the run's "
            "metrics.csv (training + validation); inference img/s covers decoding, transforms and the "
            "forward pass of the query and gallery images, batch size `infer.batch_size`.", ""]
    if command:
        head += ["```bash", command, "```", ""]
    machine = (f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
               f"{'CUDA ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'}.")
    return "\n".join(head) + table_markdown(rows) + f"\n**When to choose which.** {recommend(rows)}\n\n{machine}\n"


def compare(approaches: list[Approach], data: str | Path, out: str | Path, work: str | Path = "runs/compare",
            overrides: Sequence[str] = (), force: bool = False, reuse: bool = False,
            max_queries: int | None = None, max_gallery: int | None = None,
            command: str | None = None) -> list[dict[str, Any]]:
    """Train the approaches that need it, evaluate all on the same test folders, write ``out``."""
    out, work = Path(out), Path(work)
    if out.exists() and not force:
        raise FileExistsError(f"{out} exists; pass --force to overwrite it")
    if not approaches:
        raise ValueError("nothing to compare: give --configs and/or --runs")
    _unique_names(approaches)
    comp = Competition.from_root(data, need_training=any(a.checkpoint is None for a in approaches))
    if max_queries or max_gallery:
        comp = subset_competition(comp, work / "test_subset", max_queries, max_gallery)
    gt = read_ground_truth(comp.ground_truth)
    test_files = [p for d in (comp.query_dir, comp.gallery_dir) for p in sorted(d.iterdir()) if p.is_file()]
    for path in test_files:  # into the page cache, so the first approach's img/s is not a cold-disk figure
        path.read_bytes()
    n_gallery = sum(1 for p in test_files if p.parent == comp.gallery_dir)
    rows = []
    for a in approaches:
        t = time.perf_counter()
        if a.checkpoint is None:
            cfg = _train(a, comp, work, overrides, reuse)
        else:
            cfg = load([a.checkpoint / "config.yaml"], list(overrides))
        rows.append(evaluate_checkpoint(a, cfg, comp, gt))
        log.info("%s: mAP %.4f, R@1 %.4f (%.0f s in all)", a.name, rows[-1]["map"], rows[-1]["r1"],
                 time.perf_counter() - t)
    write_bytes_atomic(out, _report(rows, Path(data), comp, len(gt), n_gallery, command).encode(), force=force)
    return rows
