"""Quality benchmark: does the shipped recipe beat the pretrained model on a competition's test split?

    simsearch bench quality --data ROOT [--config configs/effnet_lite0_offline.yaml]
        [--minutes 30] [--val-split image|class] [--work runs/bench_quality] [key=value ...]

ROOT is laid out like ../shared/data/caltech101 (training/<class>/*, test/query, test/gallery,
test/ground_truth.json). The config is trained twice (``training.engine.fit``, what ``simsearch train`` runs): with
``train.epochs=0`` (the untrained model: the best zero-shot setting of the same config, since the
recipe's identity head passes the backbone's GeM features through) and as shipped, with its
training time capped by ``--minutes`` (``train.time_limit_min``). Both checkpoints are scored
plain and with the config's post-processing; the table gives R@1, R@5, mAP, MRR and training
time. Validation follows ``--val-split`` (use ``class`` when the test classes are unseen).

``score_checkpoint`` is also what the demo prints: each checkpoint's query and gallery embeddings
are made once plain and once with the config's TTA, then ranked twice: "plain" (exact cosine over
the whole gallery, no TTA, QE or re-ranking) and "post" (the config's own ``infer`` settings).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from simsearch.benchmarks.common import header, write_json
from simsearch.config import default_config_path, load
from simsearch.evaluation.metrics import score_rankings
from simsearch.inference.folders import embed_folder, rankings_from_ids, search_readable
from simsearch.inference.submission import read_ground_truth
from simsearch.models.checkpoint import load_model
from simsearch.retrieval.device import inference_device, place_model
from simsearch.retrieval.pipeline import RetrievalOptions
from simsearch.training.engine import fit
from simsearch.utils.errors import USER_ERRORS, user_error

__all__ = ["METRICS", "describe_post", "main", "quality_table", "score_checkpoint"]

METRICS = ("r1", "r5", "map", "mrr")


def describe_post(cfg: DictConfig) -> str:
    """The shipped post-processing in words, e.g. 'flip TTA + alpha-QE (k=2) + re-ranking'."""
    i = cfg.infer
    parts = ["flip TTA"] if i.tta_flip else []
    if list(i.tta_scales) != [1.0]:
        parts.append(f"scales {list(i.tta_scales)}")
    if i.dba_k:
        parts.append(f"DBA (k={i.dba_k})")
    if i.qe != "none":
        parts.append(f"{i.qe}-QE (k={i.qe_k})")
    if i.rerank:
        parts.append(f"re-ranking (k1={i.k1}, k2={i.k2}, λ={i.lambda_value})")
    return " + ".join(parts) or "none"


def score_checkpoint(checkpoint: str | Path, test_dir: str | Path, cfg: DictConfig | None = None,
                     ) -> dict[str, dict[str, float]]:
    """{"plain": metrics, "post": metrics} of a checkpoint on ``test_dir`` (query/, gallery/,
    ground_truth.json); ``cfg`` (default: the checkpoint's own) gives the post-processing, the device
    (``train.cpu``) and the precision (``infer.precision``)."""
    model, own = load_model(checkpoint)
    cfg = cfg or own
    place_model(model, inference_device(bool(OmegaConf.select(cfg, "train.cpu", default=False))))
    test = Path(test_dir)
    gt = read_ground_truth(test / "ground_truth.json")
    opts = replace(RetrievalOptions.from_config(cfg.infer), top_k=0)  # rank the whole gallery: full mAP
    plain_opts = replace(opts, qe="none", dba_k=0, rerank=False)
    embed = {}  # made once per TTA setting: plain, and the config's TTA when it has one
    for tta in {False, bool(cfg.infer.tta_flip)}:
        scales = tuple(cfg.infer.tta_scales) if tta else (1.0,)
        embed[tta] = (embed_folder(model, test / "query", cfg, None, tta, scales, None, "queries"),
                      embed_folder(model, test / "gallery", cfg, None, tta, scales, None, "gallery"))
    out = {}
    for name, tta, o in (("plain", False, plain_opts), ("post", bool(cfg.infer.tta_flip), opts)):
        q, g = embed[tta]
        m = score_rankings(rankings_from_ids(q, g, search_readable(q, g, o)), gt, ks=(1, 5))
        out[name] = {k: m[k] for k in METRICS}
    return out


def quality_table(rows: list[dict[str, Any]], post: str) -> str:
    """Markdown: one row per (model, plain / post-processed) with R@1, R@5, mAP, MRR, training time."""
    lines = [f"post-processing = {post}", "",
             "| model | post-processing | R@1 | R@5 | mAP | MRR | training (min) |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        for kind in ("plain", "post"):
            m = r["scores"][kind]
            minutes = f"{r['train_s'] / 60:.1f}" if r.get("train_s") is not None else "-"
            lines.append(f"| {r['name']} | {'shipped' if kind == 'post' else 'none'} | {m['r1']:.4f} | "
                         f"{m['r5']:.4f} | {m['map']:.4f} | {m['mrr']:.4f} | {minutes} |")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="competition folder (training/, test/)")
    p.add_argument("--config", default=str(default_config_path().with_name("effnet_lite0_offline.yaml")))
    p.add_argument("--minutes", type=float, default=30.0, help="training time budget (train.time_limit_min)")
    p.add_argument("--val-split", default="image", choices=["image", "class"],
                   help="validation hold-out: image (seen test classes) or class (unseen test classes)")
    p.add_argument("--work", default="runs/bench_quality", help="benchmark-owned folder, replaced per data set")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("overrides", nargs="*", help="key=value overrides for both runs")
    return p.parse_intermixed_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    data = Path(args.data)
    work = Path(args.work) / data.name
    if work.exists():
        shutil.rmtree(work)
    common = [f"data.train_dir={data / 'training'}", f"data.val_split={args.val_split}",
              f"train.output_dir={work}", *args.overrides]
    rows = []
    for name, extra in (("untrained", ["train.epochs=0", "train.stages=[]", "train.wise_alphas=[]"]),
                        ("fine-tuned", [f"train.time_limit_min={args.minutes}"])):
        t0 = time.perf_counter()
        try:
            fit(load([args.config], [*common, f"run_name={name}", *extra]))
        except USER_ERRORS as exc:
            return user_error(exc)
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
