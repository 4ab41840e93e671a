"""Benchmark: sparse k-reciprocal re-ranking (library) vs the dense reference.

    simsearch bench rerank [--nq 14218 --ng 12612 --dim 512] [--repeats 3] [--json OUT]
    simsearch bench rerank --sizes 1000 5000 10000 --big-ng 100000   # the full comparison
    simsearch bench rerank --data ROOT [ROOT ...] [--config effnet_lite0_offline] [--cache DIR]

Every measurement runs in a fresh 'spawn' subprocess, whose VmHWM is its peak resident memory
(not ru_maxrss, which Linux carries over from the parent into a spawned child): Python,
NumPy/FAISS/SciPy and the input embeddings included. The "baseline" column is that process's
peak just before the method starts, and "method" memory is peak minus baseline.

Always run: ours at --nq x --ng (In-shop size by default, checked against its 30 s / 3 GB
target) and an exactness check at a small size (--dense-nq/--dense-ng) where ours re-ranks the
whole gallery and must agree with the dense reference. With --sizes, ours is compared with the
dense reference at Nq = Ng = N for each N with the library's default candidate list
(--candidates), and with --whole-gallery also with the whole gallery as candidates; the
targets of the 5k comparison (>= 20x faster, <= 1/10 of the memory, >= 99% identical top-10)
are checked. With --big-ng, ours also runs alone at --big-nq x --big-ng. The dense reference
is skipped, with a note, where its N x N matrices would not fit in the memory available.

With --data, nothing above runs: the untrained model of --config embeds each ROOT/test (query/,
gallery/, ground_truth.json; no TTA, cached as .npz under --cache) and the table gives R@1, R@5,
mAP and MRR over the whole gallery without re-ranking and with each ``infer.rerank_norm``, the
config's other ``infer`` settings (k1, k2, lambda, candidates) kept: which normalisation helps.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from simsearch.benchmarks.common import (
    GIB,
    available_memory_bytes,
    check,
    fmt,
    header,
    machine_info,
    peak_rss_bytes,
    run_in_fresh_process,
    summarize,
    write_json,
)
from simsearch.benchmarks.dense_reference import (
    dense_k_reciprocal_rerank,
    dense_memory_lower_bound,
)
from simsearch.retrieval.rerank import NORMS
from simsearch.utils.synthetic import clustered_unit_vectors

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from simsearch.inference.folders import EmbeddedFolder

__all__ = ["clustered_unit_vectors", "main", "measure"]

INSHOP = (14218, 12612)
#: Peak of the dense reference over its four N x N matrices (measured ~1.0x at N=5k), with a
#: margin; used only to decide whether it fits in the memory available.
DENSE_PEAK_FACTOR = 1.25
#: Environment of the dense reference's processes. NumPy 2.4's bundled OpenBLAS segfaults on
#: the (20k x 512) @ (512 x 20k) float64 product of the N = 10k comparison when it uses 2
#: threads (reproduced outside this code); one BLAS thread avoids it. That product is a few
#: seconds of the reference's minutes, most of which are single-threaded Python loops.
DENSE_ENV = {"OPENBLAS_NUM_THREADS": "1"}


def _top10(order_source: np.ndarray) -> np.ndarray:
    """Ten best gallery ids per row of a distance matrix, ties broken by gallery order."""
    return np.argsort(order_source, axis=1, kind="stable")[:, :10]


def _child(method: str, data_args: dict, params: dict, conn) -> None:
    """Runs in a fresh process: build the data, time one method, report time and peak RSS."""
    import time

    from simsearch.retrieval.rerank import k_reciprocal_rerank

    q, g = clustered_unit_vectors(**data_args)
    baseline = peak_rss_bytes()
    start = time.perf_counter()
    if method == "sparse":
        idx, _ = k_reciprocal_rerank(q, g, **params)
        elapsed, peak = time.perf_counter() - start, peak_rss_bytes()
        top10 = idx[:, :10]
    else:
        final = dense_k_reciprocal_rerank(
            q, g, k1=params["k1"], k2=params["k2"], lambda_value=params["lambda_value"]
        )
        elapsed, peak = time.perf_counter() - start, peak_rss_bytes()
        top10 = _top10(final)
    conn.send({"time_s": elapsed, "peak_rss": peak, "baseline_rss": baseline,
               "top1": top10[:, 0].tolist(), "top10": top10})
    conn.close()


def measure(method: str, data_args: dict, params: dict, repeats: int) -> dict:
    """Run ``method`` ``repeats`` times, each in its own spawned process."""
    env = DENSE_ENV if method == "dense" else None
    runs = [run_in_fresh_process(_child, (method, data_args, params), env, what=f"{method} run")
            for _ in range(repeats)]
    t = summarize([r["time_s"] for r in runs])
    return {
        "method": method, "nq": data_args["nq"], "ng": data_args["ng"],
        "clusters": data_args["n_clusters"],
        "candidates": params.get("num_candidates") if method == "sparse" else data_args["ng"],
        "repeats": repeats, "time_s": t,
        "time_median_s": t["median"], "time_min_s": t["min"], "time_max_s": t["max"],
        "peak_rss_gib": max(r["peak_rss"] for r in runs) / GIB,
        "baseline_rss_gib": max(r["baseline_rss"] for r in runs) / GIB,
        "method_rss_gib": max(r["peak_rss"] - r["baseline_rss"] for r in runs) / GIB,
        "top1": runs[0]["top1"], "top10": runs[0]["top10"],
    }


def clusters_for(n: int) -> int:
    """Centres of the comparison data: N/5, clamped to the 500-2,000 of the issue (and N/2)."""
    return max(1, min(2000, max(500, n // 5), n // 2))


def compare_at(n: int, args: argparse.Namespace, params: dict) -> list[dict]:
    """Ours (default candidates, optionally the whole gallery) vs the dense reference at Nq = Ng = n."""
    data = {"nq": n, "ng": n, "dim": args.dim, "n_clusters": args.sweep_clusters or clusters_for(n),
            "noise": args.noise, "seed": args.seed}
    rows = [measure("sparse", data, params, args.repeats)]
    if args.whole_gallery and params["num_candidates"] < n:
        rows.append(measure("sparse", data, dict(params, num_candidates=n), args.repeats))
    need = dense_memory_lower_bound(2 * n) * DENSE_PEAK_FACTOR
    if need > 0.9 * available_memory_bytes():
        print(f"dense reference at N={n} skipped: needs ~{need / GIB:.1f} GiB, "
              f"{available_memory_bytes() / GIB:.1f} GiB available")
        return rows
    dense = measure("dense", data, params, args.dense_repeats or args.repeats)
    for r in rows:
        r["speedup"] = dense["time_median_s"] / r["time_median_s"]
        r["memory_ratio"] = r["method_rss_gib"] / max(dense["method_rss_gib"], 1e-9)
        r["top10_identical"] = float((r["top10"] == dense["top10"]).all(axis=1).mean())
        r["top10_same_set"] = float(np.mean(
            [set(a) == set(b) for a, b in zip(r["top10"].tolist(), dense["top10"].tolist())]))
    return rows + [dense]


def embed_dev_set(test: Path, cfg: "DictConfig", cache: Path | None) -> tuple["EmbeddedFolder", ...]:
    """Query and gallery of ``test`` embedded by the untrained model of ``cfg`` (no TTA), or read
    from ``cache``/<data set>_<run name>_<hash of the model and data sections>.npz when an earlier
    run wrote it (delete it when the images change)."""
    import hashlib

    from omegaconf import OmegaConf

    from simsearch.inference.folders import EmbeddedFolder, embed_folder
    from simsearch.models import build_model

    sections = OmegaConf.to_yaml(OmegaConf.masked_copy(cfg, ["model", "data"]))
    tag = hashlib.sha256(sections.encode()).hexdigest()[:8]
    path = None if cache is None else Path(cache) / f"{test.parent.name}_{cfg.run_name}_{tag}.npz"
    if path is not None and path.exists():
        z = np.load(path)
        print(f"embeddings of {test} read from {path}")
        return tuple(EmbeddedFolder(test / side, z[f"{side}_names"].tolist(), z[f"{side}_emb"],
                                    z[f"{side}_ok"], 0.0) for side in ("query", "gallery"))
    model = build_model(cfg).eval()
    sets = tuple(embed_folder(model, test / side, cfg, None, False, (1.0,), None, side)
                 for side in ("query", "gallery"))
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, **{f"{side}_{k}": v for side, s in zip(("query", "gallery"), sets)
                          for k, v in (("names", np.asarray(s.names)), ("emb", s.emb), ("ok", s.ok))})
        print(f"embeddings of {test} written to {path}")
    return sets


#: Rows of the --data table: no re-ranking, then each ``infer.rerank_norm``.
DEV_VARIANTS = ("none", *NORMS)


def dev_set_scores(test: Path, cfg: "DictConfig", cache: Path | None) -> list[dict]:
    """R@1, R@5, mAP, MRR over the whole gallery of ``test`` for each of DEV_VARIANTS."""
    from simsearch.benchmarks.quality import METRICS
    from simsearch.evaluation.metrics import score_rankings
    from simsearch.inference.folders import rankings_from_ids, search_readable
    from simsearch.inference.submission import read_ground_truth
    from simsearch.retrieval.pipeline import RetrievalOptions

    query, gallery = embed_dev_set(test, cfg, cache)
    gt = read_ground_truth(test / "ground_truth.json")
    base = RetrievalOptions.from_config(cfg.infer, top_k=0, qe="none", dba_k=0)  # re-ranking alone
    rows = []
    for variant in DEV_VARIANTS:
        opts = base if variant == "none" else replace(base, rerank_norm=variant)
        opts = replace(opts, rerank=variant != "none")
        m = score_rankings(rankings_from_ids(query, gallery, search_readable(query, gallery, opts)), gt, ks=(1, 5))
        rows.append({"data": test.parent.name, "queries": int(query.ok.sum()), "gallery": int(gallery.ok.sum()),
                     "rerank_norm": variant, **{k: m[k] for k in METRICS}})
    return rows


def dev_winner(rows: list[dict]) -> str | None:
    """The rerank_norm with the highest mAP on every data set and an R@1 not lower there than the
    other norms'; None when the data sets disagree. Whether to re-rank at all (the ``none`` rows)
    is ``infer.rerank``'s question, not this one's."""
    ranked = [r for r in rows if r["rerank_norm"] in NORMS]
    for norm in NORMS:
        if all(r["map"] >= o["map"] and r["r1"] >= o["r1"] for r in ranked if r["rerank_norm"] == norm
               for o in ranked if o["data"] == r["data"]):
            return norm
    return None


def dev_table(rows: list[dict]) -> str:
    lines = ["| data set | queries | gallery | re-ranking | R@1 | R@5 | mAP | MRR |",
             "|---|---:|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['data']} | {r['queries']} | {r['gallery']} | {r['rerank_norm']} | {r['r1']:.4f} "
                     f"| {r['r5']:.4f} | {r['map']:.4f} | {r['mrr']:.4f} |")
    return "\n".join(lines)


def dev_main(args: argparse.Namespace) -> int:
    """--data mode: which ``infer.rerank_norm`` helps on real embeddings (see the module docstring)."""
    from simsearch.config import load

    cfg = load([args.config], args.overrides)
    i = cfg.infer
    print(header(f"Re-ranking normalisation on dev sets: untrained {args.config}", notes=[
        f"k1={i.k1}, k2={i.k2}, lambda={i.lambda_value}, {i.rerank_candidates} candidates, no TTA, QE or DBA; "
        "metrics over the whole gallery"]))
    rows = [r for root in args.data for r in dev_set_scores(Path(root) / "test", cfg, args.cache)]
    print(dev_table(rows))
    winner = dev_winner(rows)
    print(f"\nre-ranking norm with the best mAP on every data set and R@1 not lower: "
          f"{winner or 'none (the data sets disagree)'}")
    if args.json is not None:
        write_json(args.json, {"rows": rows, "winner": winner, "args": vars(args)})
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="k-reciprocal re-ranking benchmark")
    p.add_argument("--nq", type=int, default=INSHOP[0])
    p.add_argument("--ng", type=int, default=INSHOP[1])
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--clusters", type=int, default=2000, help="cluster centres of the data")
    p.add_argument("--noise", type=float, default=0.8, help="per-dimension noise around them")
    p.add_argument("--k1", type=int, default=20)
    p.add_argument("--k2", type=int, default=6)
    p.add_argument("--lambda-value", type=float, default=0.3)
    p.add_argument("--candidates", type=int, default=100)
    p.add_argument("--dense-nq", type=int, default=1500, help="queries of the dense run")
    p.add_argument("--dense-ng", type=int, default=1500, help="gallery of the dense run")
    p.add_argument("--sizes", type=int, nargs="*", default=[],
                   help="compare with the dense reference at Nq = Ng = N for each N")
    p.add_argument("--sweep-clusters", type=int, default=None,
                   help="centres of the comparison data (default N/5 within 500-2000)")
    p.add_argument("--big-nq", type=int, default=INSHOP[0], help="queries of the large run")
    p.add_argument("--big-ng", type=int, default=0, help="gallery of the large run (0 = off)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dense-repeats", type=int, default=None, help="default: --repeats")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--whole-gallery", action="store_true",
                   help="with --sizes, also run ours with the whole gallery as candidates")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--data", nargs="+", default=None, metavar="ROOT",
                   help="dev-set mode: score the re-ranking normalisations on each ROOT/test (see above)")
    p.add_argument("--config", default="effnet_lite0_offline", help="--data: the (untrained) model's config")
    p.add_argument("--cache", type=Path, default=None, help="--data: folder of the embeddings' .npz files")
    p.add_argument("-o", "--overrides", nargs="*", default=[], metavar="KEY=VALUE",
                   help="--data: config overrides, e.g. infer.k1=10")
    return p.parse_args(argv)


def table(rows: list[dict]) -> str:
    head = ("| method | Nq | Ng | candidates | time s, median (min–max) | peak RSS GiB "
            "| baseline RSS GiB | method RSS GiB |")
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['nq']} | {r['ng']} | {r['candidates']} | {fmt(r['time_s'])} "
            f"| {r['peak_rss_gib']:.2f} | {r['baseline_rss_gib']:.2f} | {r['method_rss_gib']:.2f} |"
        )
    return "\n".join(lines)


def comparison_table(rows: list[dict]) -> str:
    head = ("| N = Nq = Ng | clusters | method | candidates | time s, median (min–max) "
            "| method RSS GiB | speed-up vs dense | memory vs dense | top-10 identical "
            "| top-10 same set |")
    lines = [head, "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        extra = (f"{r['speedup']:.1f}x | {r['memory_ratio']:.3f} | {r['top10_identical']:.1%} "
                 f"| {r['top10_same_set']:.1%}") if "speedup" in r else "– | – | – | –"
        lines.append(f"| {r['nq']} | {r['clusters']} | {r['method']} | {r['candidates']} "
                     f"| {fmt(r['time_s'])} | {r['method_rss_gib']:.3f} | {extra} |")
    return "\n".join(lines)


def target_lines(rows: list[dict]) -> list[str]:
    """The 5k targets for each configuration of ours (at the largest N when 5k was not run)."""
    compared = [r for r in rows if "speedup" in r]
    if not compared:
        return []
    n = 5000 if any(r["nq"] == 5000 for r in compared) else max(r["nq"] for r in compared)
    note = "" if n == 5000 else " (targets are set at N=5000; this run's largest N is shown)"
    out = [f"\nTargets at N={n}{note}:"]
    for r in (r for r in compared if r["nq"] == n):
        who = f"ours, {r['candidates']} candidates"
        out += [check(f"{who}: >= 20x faster", r["speedup"] >= 20, f"{r['speedup']:.1f}x", ">= 20x"),
                check(f"{who}: <= 1/10 memory", r["memory_ratio"] <= 0.1,
                      f"{r['memory_ratio']:.3f} of dense (peak minus baseline RSS)", "<= 0.100"),
                check(f"{who}: identical top-10", r["top10_identical"] >= 0.99,
                      f"{r['top10_identical']:.1%} of queries", ">= 99%")]
    return out


def inshop_lines(row: dict) -> list[str]:
    if (row["nq"], row["ng"]) != INSHOP:
        return []
    return ["\nIn-shop size target (2 cores):",
            check("time", row["time_median_s"] <= 30, f"{row['time_median_s']:.1f} s median", "<= 30 s"),
            check("memory", row["peak_rss_gib"] * GIB <= 3e9,
                  f"{row['peak_rss_gib'] * GIB / 1e9:.2f} GB peak RSS of the whole process", "<= 3 GB")]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.data:
        return dev_main(args)
    params = {"k1": args.k1, "k2": args.k2, "lambda_value": args.lambda_value,
              "num_candidates": args.candidates}
    data = {"dim": args.dim, "n_clusters": args.clusters, "noise": args.noise, "seed": args.seed}
    full = dict(data, nq=args.nq, ng=args.ng)
    small = dict(data, nq=args.dense_nq, ng=args.dense_ng)
    small_params = dict(params, num_candidates=args.dense_ng)  # re-rank the whole gallery
    info = machine_info()
    print(header("Re-ranking: sparse (ours) vs dense reference", info,
                 [f"Repeats: {args.repeats} (dense: {args.dense_repeats or args.repeats}), each in "
                  f"a fresh process; data: unit vectors, dim {args.dim}, noise {args.noise}; "
                  f"dense runs with {DENSE_ENV} (an OpenBLAS crash at N=10k, see rerank.py)"]))

    rows = [
        measure("sparse", full, params, args.repeats),
        measure("sparse", small, small_params, args.repeats),
        measure("dense", small, small_params, args.dense_repeats or args.repeats),
    ]
    big = ([measure("sparse", dict(data, nq=args.big_nq, ng=args.big_ng), params, args.repeats)]
           if args.big_ng else [])
    agree = float(np.mean(np.array(rows[1]["top1"]) == np.array(rows[2]["top1"])))
    n_full = args.nq + args.ng
    dense_full_gib = dense_memory_lower_bound(n_full) / GIB
    print(table(rows + big))
    print("\n".join(inshop_lines(rows[0])))
    print(f"\nsmall size: sparse and dense agree on the top-1 item of {agree:.1%} of queries")
    print(f"dense reference at Nq={args.nq}, Ng={args.ng} (N={n_full}): not run; its N x N "
          f"matrices alone need >= {dense_full_gib:.1f} GiB")

    comparison = [r for n in args.sizes for r in compare_at(n, args, params)]
    if comparison:
        print("\n" + comparison_table(comparison))
        print("\n".join(target_lines(comparison)))
    if args.json is not None:
        for r in rows + big + comparison:
            r.pop("top1")
            r.pop("top10")
        summary = {"runs": rows, "big": big, "comparison": comparison,
                   "small_top1_agreement": agree, "dense_full_size_lower_bound_gib": dense_full_gib,
                   "machine": info, "args": vars(args)}
        write_json(args.json, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
