"""Ablation: baseline, +TTA, +QE, +re-ranking and all together, from embeddings made once; plus one
row per switched-on enhancement (multi-crop, coarse-to-fine, text fusion) and all of them together."""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

from simsearch.evaluation.metrics import score_rankings
from simsearch.inference.enhancements import Enhancements, search_enhanced
from simsearch.inference.folders import rankings_from_ids
from simsearch.retrieval.pipeline import RetrievalOptions

__all__ = ["Variant", "ablation_rows", "ablation_markdown"]


@dataclass(frozen=True)
class Variant:
    """One row: its name, which embeddings (plain or TTA), the retrieval options, and the
    enhancements it uses."""

    name: str
    tta: bool
    opts: RetrievalOptions
    crops: bool = False
    second: bool = False
    text: bool = False


def _variants(opts: RetrievalOptions, enh: Any = None, crops: dict[str, Any] | None = None) -> list[Variant]:
    base = replace(opts, qe="none", dba_k=0, rerank=False, top_k=0)
    qe = opts.qe if opts.qe != "none" else "alpha"
    everything = replace(base, qe=qe, rerank=True)
    rows = [Variant("baseline", False, base),
            Variant("+TTA", True, base),
            Variant(f"+QE ({qe}, k={opts.qe_k})", False, replace(base, qe=qe)),
            Variant(f"+re-ranking (k1={opts.k1}, k2={opts.k2}, λ={opts.lambda_value})", False,
                    replace(base, rerank=True)),
            Variant("all", True, everything)]
    extra: list[str] = []
    if crops:
        mc = crops["plain"].opts
        rows.append(Variant(f"+multi-crop ({mc.detector}, {mc.fusion}, ≤{mc.max_crops} crops)", False, base,
                            crops=True))
        extra.append("multi-crop")
    if enh is not None and enh.second is not None:
        s = enh.second.opts
        rows.append(Variant(f"+coarse-to-fine (N={s.candidates}, w={s.weight})", False, base, second=True))
        extra.append("coarse-to-fine")
    if enh is not None and enh.text is not None:
        rows.append(Variant(f"+text (N={enh.text.candidates}, w={enh.text.weight})", False, base, text=True))
        extra.append("text")
    if extra:
        rows.append(Variant("all + " + " + ".join(extra), True, everything, crops=bool(crops),
                            second="coarse-to-fine" in extra, text="text" in extra))
    return rows


def ablation_rows(plain: dict[str, Any], tta: dict[str, Any], ground_truth: dict[str, list[str]],
                  opts: RetrievalOptions, enh: Any = None, crops: dict[str, Any] | None = None
                  ) -> list[dict[str, Any]]:
    """``plain``/``tta``: {"query", "gallery"} EmbeddedFolder pairs; the whole gallery is ranked.

    ``enh``: prepared Enhancements (second stage, text) or None; ``crops``: {"plain", "tta"}
    CropEmbeddings or None. Time = that row's extraction (queries, gallery, crops, the second
    model's embeddings, the texts) + retrieval and re-scoring.
    """
    rows = []
    for v in _variants(opts, enh, crops):
        src = tta if v.tta else plain
        q, g = src["query"], src["gallery"]
        row_crops = crops["tta" if v.tta else "plain"] if v.crops else None
        row_enh = None
        seconds = q.seconds + g.seconds + (row_crops.seconds if row_crops else 0.0)
        if v.second or v.text:
            row_enh = Enhancements(second=enh.second if v.second else None, text=enh.text if v.text else None,
                                   text_q=enh.text_q, text_g=enh.text_g)
            seconds += enh.seconds.get("second_embed_s", 0.0) if v.second else 0.0
            seconds += enh.seconds.get("text_s", 0.0) if v.text else 0.0
        t = time.perf_counter()
        ids, _ = search_enhanced(q, g, v.opts, row_enh, row_crops)
        seconds += time.perf_counter() - t
        m = score_rankings(rankings_from_ids(q, g, ids), ground_truth, ks=(1, 5))
        rows.append({"variant": v.name, "r1": m["r1"], "r5": m["r5"], "map": m["map"], "time_s": seconds})
    return rows


def ablation_markdown(rows: list[dict[str, Any]], title: str = "") -> str:
    lines = [f"### {title}", ""] if title else []
    lines += ["| variant | R@1 | R@5 | mAP | time (s) |", "|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['r1']:.4f} | {r['r5']:.4f} | {r['map']:.4f} | {r['time_s']:.2f} |")
    return "\n".join(lines) + "\n"
