"""Benchmark: sparse k-reciprocal re-ranking (library) vs the dense reference.

    python tools/bench/rerank.py [--nq 14218 --ng 12612 --dim 512] [--repeats 3] [--json OUT]

Every measurement runs in a fresh 'spawn' subprocess, whose ru_maxrss is its peak resident
memory (Python, NumPy/FAISS/SciPy and the input embeddings included; the "baseline" column is
that process's peak just before the method starts). The dense reference is only run at a small
size (--dense-nq/--dense-ng); at the full size its memory is given analytically from the
N x N matrices it allocates.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `tools.bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402

from simsearch.submission import write_json_atomic  # noqa: E402
from tools.bench.dense_reference import (  # noqa: E402
    dense_k_reciprocal_rerank,
    dense_memory_lower_bound,
)

GIB = 1024**3


def clustered_unit_vectors(
    nq: int, ng: int, dim: int, n_clusters: int, noise: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Queries and gallery drawn around shared random centres, L2-normalised float32."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, dim), dtype=np.float32)

    def points(n: int) -> np.ndarray:
        x = centres[rng.integers(0, n_clusters, n)]
        x += noise * rng.standard_normal((n, dim), dtype=np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    return points(nq), points(ng)


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _child(method: str, data_args: dict, params: dict, conn) -> None:
    """Runs in a fresh process: build the data, time one method, report time and peak RSS."""
    from simsearch.retrieval.rerank import k_reciprocal_rerank

    q, g = clustered_unit_vectors(**data_args)
    baseline = _peak_rss_bytes()
    start = time.perf_counter()
    if method == "sparse":
        idx, dist = k_reciprocal_rerank(q, g, **params)
        result = {"top1": idx[:, 0].tolist()}
    else:
        final = dense_k_reciprocal_rerank(
            q, g, k1=params["k1"], k2=params["k2"], lambda_value=params["lambda_value"]
        )
        result = {"top1": np.argmin(final, axis=1).tolist()}
    elapsed = time.perf_counter() - start
    conn.send({"time_s": elapsed, "peak_rss": _peak_rss_bytes(), "baseline_rss": baseline,
               **result})
    conn.close()


def measure(method: str, data_args: dict, params: dict, repeats: int) -> dict:
    """Run ``method`` ``repeats`` times, each in its own spawned process."""
    ctx = mp.get_context("spawn")
    runs = []
    for _ in range(repeats):
        parent, child = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_child, args=(method, data_args, params, child))
        proc.start()
        child.close()
        runs.append(parent.recv())
        proc.join()
        if proc.exitcode != 0:
            raise RuntimeError(f"{method} run failed with exit code {proc.exitcode}")
    times = [r["time_s"] for r in runs]
    return {
        "method": method, "nq": data_args["nq"], "ng": data_args["ng"],
        "time_median_s": statistics.median(times), "time_min_s": min(times),
        "peak_rss_gib": max(r["peak_rss"] for r in runs) / GIB,
        "baseline_rss_gib": max(r["baseline_rss"] for r in runs) / GIB,
        "top1": runs[0]["top1"],
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="k-reciprocal re-ranking benchmark")
    p.add_argument("--nq", type=int, default=14218)
    p.add_argument("--ng", type=int, default=12612)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--clusters", type=int, default=2000, help="cluster centres of the data")
    p.add_argument("--noise", type=float, default=0.8, help="per-dimension noise around them")
    p.add_argument("--k1", type=int, default=20)
    p.add_argument("--k2", type=int, default=6)
    p.add_argument("--lambda-value", type=float, default=0.3)
    p.add_argument("--candidates", type=int, default=100)
    p.add_argument("--dense-nq", type=int, default=1500, help="queries of the dense run")
    p.add_argument("--dense-ng", type=int, default=1500, help="gallery of the dense run")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    return p.parse_args(argv)


def table(rows: list[dict]) -> str:
    head = "| method | Nq | Ng | time median (min) s | peak RSS GiB | baseline RSS GiB |"
    lines = [head, "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['nq']} | {r['ng']} | {r['time_median_s']:.2f} "
            f"({r['time_min_s']:.2f}) | {r['peak_rss_gib']:.2f} | {r['baseline_rss_gib']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    params = {"k1": args.k1, "k2": args.k2, "lambda_value": args.lambda_value,
              "num_candidates": args.candidates}
    data = {"dim": args.dim, "n_clusters": args.clusters, "noise": args.noise, "seed": args.seed}
    full = dict(data, nq=args.nq, ng=args.ng)
    small = dict(data, nq=args.dense_nq, ng=args.dense_ng)
    small_params = dict(params, num_candidates=args.dense_ng)  # re-rank the whole gallery

    rows = [
        measure("sparse", full, params, args.repeats),
        measure("sparse", small, small_params, args.repeats),
        measure("dense", small, small_params, 1),
    ]
    agree = float(np.mean(np.array(rows[1]["top1"]) == np.array(rows[2]["top1"])))
    n_full = args.nq + args.ng
    dense_full_gib = dense_memory_lower_bound(n_full) / GIB
    print(table(rows))
    print(f"\nsmall size: sparse and dense agree on the top-1 item of {agree:.1%} of queries")
    print(f"dense reference at Nq={args.nq}, Ng={args.ng} (N={n_full}): not run; its N x N "
          f"matrices alone need >= {dense_full_gib:.1f} GiB")
    if args.json is not None:
        for r in rows:
            r.pop("top1")
        summary = {"runs": rows, "small_top1_agreement": agree,
                   "dense_full_size_lower_bound_gib": dense_full_gib, "args": vars(args)}
        write_json_atomic(args.json, json.loads(json.dumps(summary, default=str)), force=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
