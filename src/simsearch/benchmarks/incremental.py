"""Benchmark: incremental work, the leakage guard's hash cache and appending ``index add``.

    simsearch bench incremental [--files 100000] [--queries 100] [--base 200000] [--dim 512]
        [--adds 1000 10000] [--repeats 3] [--workdir /tmp] [--quick] [--json OUT]

(a) The leakage guard (``simsearch.evaluation.leakage.find_leaks``) over --files small files of
1-4 KB random bytes under --workdir (a gallery; --queries query files, a tenth of them copies of
gallery files): without a cache (every file read, what every run did before the cache), the first
run with an empty cache, a second run with nothing changed, and a run after 1% of the files got a
new mtime. The files were just written, so they are in the page cache: hashing reads no disk here,
and on a cold disk the runs that read every file are slower still. Their mtimes are set an hour
back, as a data set's are (the cache skips files modified in the last RACY_NS).

(b) ``index add`` at a fixed base of --base clustered unit vectors of --dim (an exact Flat index,
written by ``simsearch.retrieval.store.write_index_dir``), for each count in --adds: synthetic
vectors, no model, so only the store's append path is measured. Each add starts from a hard-link
copy of the base folder; ``load`` is ``load_index_dir`` (every add reads the index first), then
``append_rows`` (FAISS ``index.add`` of the new rows, the new shard and the manifest, each fsynced
and renamed in), the same with ``compact=True`` (the whole FAISS index also written to a new
file: what an add does once the appended rows pass COMPACT_FRACTION of the index), and the
previous add (``index.add``, then the whole folder rewritten by ``write_index_dir``, without fsync).
MB written: the sizes of the files each one created or replaced. ``load after``: loading the
folder again, which adds the appended rows to the FAISS index.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from simsearch.benchmarks.common import MIB, fmt, header, machine_info, summarize, write_json
from simsearch.evaluation.leakage import HashCache, find_leaks
from simsearch.retrieval.index import build_index
from simsearch.retrieval.store import append_rows, load_index_dir, write_index_dir
from simsearch.utils.synthetic import clustered_unit_vectors

__all__ = ["main"]

HOUR_NS = 3600 * 10**9
QUICK = {"files": 400, "queries": 20, "base": 4000, "dim": 32, "adds": [100, 1000], "repeats": 1}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="incremental work: leakage hash cache and appending index adds")
    p.add_argument("--files", type=int, default=100_000, help="gallery files of the leakage guard")
    p.add_argument("--queries", type=int, default=100, help="query files (a tenth copies of gallery files)")
    p.add_argument("--base", type=int, default=200_000, help="rows of the index that is added to")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--adds", type=int, nargs="+", default=[1000, 10_000], help="rows added, one add each")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()),
                   help="where the files and index folders are made (removed at the end)")
    p.add_argument("--quick", action="store_true",
                   help=f"tiny sizes for tests: {', '.join(f'--{k} {v}' for k, v in QUICK.items())}")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    return args


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


# --------------------------------------------------------------------------- (a) leakage guard


def make_files(root: Path, n: int, n_queries: int, seed: int) -> tuple[list[Path], list[Path]]:
    """(queries, gallery): ``n`` files of 1-4 KB random bytes in folders of 1000, mtimes an hour back."""
    rng = np.random.default_rng(seed)
    gallery = []
    for i, size in enumerate(rng.integers(1024, 4097, n)):
        path = root / "gallery" / f"d{i // 1000:04d}" / f"f{i:06d}.bin"
        if i % 1000 == 0:
            path.parent.mkdir(parents=True)
        path.write_bytes(rng.bytes(int(size)))
        gallery.append(path)
    (root / "query").mkdir()
    queries = []
    for i in range(n_queries):
        path = root / "query" / f"q{i:04d}.bin"
        if i % 10 == 0:  # a leak: a gallery file's bytes under another name
            shutil.copyfile(gallery[int(rng.integers(n))], path)
        else:
            path.write_bytes(rng.bytes(int(rng.integers(1024, 4097))))
        queries.append(path)
    for path in (*gallery, *queries):
        t = path.stat().st_mtime_ns - HOUR_NS
        os.utime(path, ns=(t, t))
    return queries, gallery


def _guard(queries: list[Path], gallery: list[Path], cache_dir: Path | None) -> dict[str, Any]:
    cache = HashCache.in_dir(cache_dir)
    seconds, leaks = _timed(lambda: find_leaks(queries, {"gallery": gallery}, cache=cache))
    return {"seconds": seconds, "hashed": cache.hashed, "leaks": leaks}


def bench_leakage(args: argparse.Namespace, root: Path) -> tuple[list[dict[str, Any]], str]:
    seconds, (queries, gallery) = _timed(lambda: make_files(root, args.files, args.queries, args.seed))
    note = f"(a) {args.files:,} gallery files and {args.queries} queries written in {seconds:.1f} s"
    cache_dir, runs = root / "cache", {}
    rng = np.random.default_rng(args.seed + 1)

    def touch_one_percent() -> None:
        for i in rng.choice(len(gallery), max(1, len(gallery) // 100), replace=False):
            st = gallery[i].stat()
            os.utime(gallery[i], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))

    cases = [("no cache (every file read: the guard before)", None, None),
             ("first run, empty cache", lambda: shutil.rmtree(cache_dir, ignore_errors=True), cache_dir),
             ("second run, nothing changed", None, cache_dir),
             ("after 1% of the files got a new mtime", touch_one_percent, cache_dir)]
    for name, prepare, where in cases:
        results = []
        for _ in range(args.repeats):
            if prepare is not None:
                prepare()
            results.append(_guard(queries, gallery, where))
        runs[name] = results
    expected = runs[cases[0][0]][0]["leaks"]
    rows = [{"run": name, "files": len(queries) + len(gallery), "hashed": res[-1]["hashed"],
             "seconds": summarize([r["seconds"] for r in res]),
             "same_leaks": all(r["leaks"] == expected for r in res)} for name, res in runs.items()]
    return rows, note + f"; {len(expected)} leaking queries found"


def leakage_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| leakage guard run | files | files hashed | seconds | same leaks as without cache |",
             "| --- | ---: | ---: | ---: | --- |"]
    lines += [f"| {r['run']} | {r['files']:,} | {r['hashed']:,} | {fmt(r['seconds'])} | "
              f"{'yes' if r['same_leaks'] else 'NO'} |" for r in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------- (b) index add


def _stamps(folder: Path) -> dict[str, tuple[int, int, int]]:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns, p.stat().st_size) for p in folder.iterdir()}


def _written_mb(before: dict[str, tuple[int, int, int]], folder: Path) -> float:
    """MiB of the files that are new or replaced since ``before``."""
    after = _stamps(folder)
    return sum(s[2] for n, s in after.items() if before.get(n) != s) / MIB


def _one_add(base: Path, work: Path, ids: list[str], x: np.ndarray, path: str) -> dict[str, float]:
    """Load a hard-link copy of ``base`` and add ``x`` by ``path``; seconds and MiB written."""
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(base, work, copy_function=os.link)  # files are never changed in place, only replaced
    before = _stamps(work)
    load_s, loaded = _timed(lambda: load_index_dir(work))
    if path == "before":
        def old_add() -> None:
            loaded.index.add(x)
            write_index_dir(work, loaded.manifest, loaded.ids + ids, np.concatenate([loaded.emb, x]), loaded.index)
        write_s, _ = _timed(old_add)
    else:
        write_s, _ = _timed(lambda: append_rows(loaded, ids, x, compact=path == "compact"))
    mb = _written_mb(before, work)
    after_s, again = _timed(lambda: load_index_dir(work))
    if again.index.ntotal != len(loaded.ids) + (len(ids) if path == "before" else 0):
        raise RuntimeError(f"{work}: {again.index.ntotal} rows after the add ({path})")
    return {"load_s": load_s, "write_s": write_s, "mb": mb, "load_after_s": after_s}


PATHS = {"append": "append: new shard + manifest", "compact": "append + whole FAISS index (compaction)",
         "before": "before: whole folder rewritten"}


def bench_add(args: argparse.Namespace, root: Path) -> tuple[list[dict[str, Any]], str]:
    n_new = max(args.adds)
    _, x = clustered_unit_vectors(0, args.base + n_new, args.dim, max(10, args.base // 100), 0.8, args.seed)
    base = root / "base"
    manifest = {"checkpoint": "synthetic", "checkpoint_sha256": "0" * 64, "images_dir": str(root),
                "factory": "Flat", "embedding": {}, "clip": None, "unreadable": [], "config": {}}
    ids = [f"img_{i:07d}.jpg" for i in range(args.base + n_new)]
    build_s, _ = _timed(lambda: write_index_dir(base, manifest, ids[:args.base], x[:args.base],
                                                build_index(x[:args.base], "Flat")))
    size = sum(p.stat().st_size for p in base.iterdir()) / MIB
    rows = []
    for n in args.adds:
        new_ids, new_x = ids[args.base:args.base + n], np.ascontiguousarray(x[args.base:args.base + n])
        for path, label in PATHS.items():
            runs = [_one_add(base, root / "work", new_ids, new_x, path) for _ in range(args.repeats)]
            rows.append({"added": n, "path": label, **{k: summarize([r[k] for r in runs])
                                                         for k in ("load_s", "write_s", "mb", "load_after_s")}})
    shutil.rmtree(root / "work", ignore_errors=True)
    note = (f"(b) base index: {args.base:,} x {args.dim} clustered unit vectors, Flat, {size:.0f} MiB on disk, "
            f"built and written in {build_s:.1f} s")
    return rows, note


def add_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| rows added | add path | load s (before the add) | write s | MiB written | load after s |",
             "| ---: | --- | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r['added']:,} | {r['path']} | {fmt(r['load_s'])} | {fmt(r['write_s'], 3)} | "
              f"{fmt(r['mb'], 2)} | {fmt(r['load_after_s'])} |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    info = machine_info()
    print(header("Incremental work: leakage hash cache, appending index adds", info, [
        f"(a) {args.files:,} files of 1-4 KB, {args.queries} queries; (b) base {args.base:,} x {args.dim}, "
        f"adds of {', '.join(f'{n:,}' for n in args.adds)} rows; medians of {args.repeats} repeats (min-max)"]),
        flush=True)
    args.workdir.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="simsearch-bench-incremental-", dir=args.workdir))
    try:
        seconds, (leak_rows, leak_note) = _timed(lambda: bench_leakage(args, root / "leakage"))
        leak_note += f" (part (a): {seconds:.0f} s in all)"
        print(leak_note + "\n\n" + leakage_table(leak_rows) + "\n", flush=True)
        shutil.rmtree(root / "leakage")
        seconds, (add_rows, add_note) = _timed(lambda: bench_add(args, root / "index"))
        add_note += f" (part (b): {seconds:.0f} s in all)"
        print(add_note + "\n\n" + add_table(add_rows), flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if args.json is not None:
        write_json(args.json, {"leakage": leak_rows, "add": add_rows, "notes": [leak_note, add_note],
                               "machine": info, "args": vars(args)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
