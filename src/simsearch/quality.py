"""Does training pay? Score checkpoints on a competition's test split, plain and post-processed.

Used by the quality benchmark (``tools/bench/quality.py``) and the demo: each checkpoint's query
and gallery embeddings are made once plain and once with the config's TTA, then ranked twice:
"plain" (exact cosine over the whole gallery, no TTA, QE or re-ranking) and "post" (the config's
own ``infer`` settings: TTA, query expansion, DBA, re-ranking), and scored against the ground truth.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from .checkpoint import load_model
from .metrics import score_rankings
from .predict import embed_folder, rankings_from_ids, search_readable
from .retrieval.pipeline import RetrievalOptions
from .submission import read_ground_truth

__all__ = ["METRICS", "describe_post", "quality_table", "score_checkpoint"]

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
    ground_truth.json); ``cfg`` (default: the checkpoint's own) gives the post-processing."""
    model, own = load_model(checkpoint)
    cfg = cfg or own
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
