"""Ablation: baseline, +TTA, +QE, +re-ranking and all together, from embeddings made once."""
from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from .metrics import score_rankings
from .retrieval.pipeline import RetrievalOptions

__all__ = ["ablation_rows", "ablation_markdown"]


def _variants(opts: RetrievalOptions) -> list[tuple[str, bool, RetrievalOptions]]:
    base = replace(opts, qe="none", dba_k=0, rerank=False, top_k=0)
    qe = opts.qe if opts.qe != "none" else "alpha"
    return [("baseline", False, base),
            ("+TTA", True, base),
            (f"+QE ({qe}, k={opts.qe_k})", False, replace(base, qe=qe)),
            (f"+re-ranking (k1={opts.k1}, k2={opts.k2}, λ={opts.lambda_value})", False,
             replace(base, rerank=True)),
            ("all", True, replace(base, qe=qe, rerank=True))]


def ablation_rows(plain: dict[str, Any], tta: dict[str, Any], ground_truth: dict[str, list[str]],
                  opts: RetrievalOptions) -> list[dict[str, Any]]:
    """``plain``/``tta``: {"query", "gallery"} EmbeddedFolder pairs; the whole gallery is ranked.

    Time = that embedding's extraction time (queries and gallery) + retrieval time.
    """
    from .predict import rankings_from_ids, search_readable

    rows = []
    for name, use_tta, variant in _variants(opts):
        src = tta if use_tta else plain
        q, g = src["query"], src["gallery"]
        t = time.perf_counter()
        ids = search_readable(q, g, variant)
        seconds = time.perf_counter() - t + q.seconds + g.seconds
        m = score_rankings(rankings_from_ids(q, g, ids), ground_truth, ks=(1, 5))
        rows.append({"variant": name, "r1": m["r1"], "r5": m["r5"], "map": m["map"], "time_s": seconds})
    return rows


def ablation_markdown(rows: list[dict[str, Any]], title: str = "") -> str:
    lines = [f"### {title}", ""] if title else []
    lines += ["| variant | R@1 | R@5 | mAP | time (s) |", "|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['r1']:.4f} | {r['r5']:.4f} | {r['map']:.4f} | {r['time_s']:.2f} |")
    return "\n".join(lines) + "\n"
