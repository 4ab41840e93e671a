"""Shared pieces of the benchmarks: the machine/version header, repeat statistics, JSON output,
clustered test vectors and memory probes.

Every benchmark prints the same header so a table pasted into the README carries the machine and
the library versions it was measured with; every timed figure is a median of repeats with its
min-max, so the spread is visible instead of one lucky run.
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

GIB = 1024**3
MIB = 1024**2


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """Machine and versions behind a measurement (printed and stored with every result)."""
    import faiss
    import torch

    import simsearch

    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "faiss": faiss.__version__,
        "numpy": np.__version__,
        "simsearch": simsearch.__version__,
    }


def header(title: str, info: dict[str, Any] | None = None, notes: Sequence[str] = ()) -> str:
    """Markdown heading naming the machine and versions, then any notes (sizes, repeats)."""
    m = info or machine_info()
    lines = [
        f"## {title}",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores (torch threads {m['torch_threads']}), "
        f"GPU: {m['gpu']}",
        f"Versions: python {m['python']}, torch {m['torch']}, faiss {m['faiss']}, "
        f"numpy {m['numpy']}, simsearch {m['simsearch']}",
    ]
    lines += list(notes)
    return "\n".join(lines) + "\n"


def summarize(values: Sequence[float]) -> dict[str, Any]:
    """Median, min and max of repeated measurements (and the values themselves, for JSON)."""
    vals = [float(v) for v in values]
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "values": vals}


def fmt(s: dict[str, Any], digits: int = 2) -> str:
    """``median (min–max)``; a single repeat prints as its value alone."""
    if s["min"] == s["max"]:
        return f"{s['median']:.{digits}f}"
    return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}–{s['max']:.{digits}f})"


def scale(s: dict[str, Any], factor: float) -> dict[str, Any]:
    """The same statistics in other units (e.g. seconds per batch -> ms per image)."""
    return summarize([v * factor for v in s["values"]])


def rate(count: float, seconds: dict[str, Any]) -> dict[str, Any]:
    """Turn repeated durations into repeated rates (count / s); median of rates, not of times."""
    return summarize([count / max(t, 1e-12) for t in seconds["values"]])


def time_repeats(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> dict[str, Any]:
    """Seconds per call of ``fn`` over ``repeats`` calls, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return summarize(times)


def check(name: str, ok: bool, measured: str, target: str) -> str:
    """One line stating whether a target is met, with the measured figure next to it."""
    return f"- {name}: {'MET' if ok else 'MISSED'} (measured {measured}; target {target})"


def peak_rss_bytes() -> int:
    """Peak resident memory of this process so far: VmHWM of /proc/self/status.

    Not ru_maxrss: Linux carries the parent's high-water mark into a fork+exec'd child
    ('spawn'), so a child of a large parent would report the parent's peak as its own.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def current_rss_bytes() -> int:
    """Resident memory now (from /proc), for before/after differences within one process."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return peak_rss_bytes()


def available_memory_bytes() -> int:
    """MemAvailable from /proc/meminfo; a large number where it cannot be read."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 1 << 62


def run_in_fresh_process(target: Callable[..., None], args: tuple, env: dict[str, str] | None = None,
                         what: str | None = None) -> Any:
    """``target(*args, conn)`` in a fresh 'spawn' process; returns what it sends on ``conn``.

    A fresh process, so that its VmHWM (:func:`peak_rss_bytes`) measures that run alone. ``env``:
    variables the child starts with (a spawned child copies the environment when it starts; the
    parent's is restored right after). A child that dies or sends nothing raises, naming ``what``.
    """
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=target, args=(*args, child))
    saved = {k: os.environ.get(k) for k in env or {}}
    os.environ.update(env or {})
    try:
        proc.start()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    child.close()
    try:
        result = parent.recv()
    except EOFError:
        result = None
    proc.join()
    if proc.exitcode != 0 or result is None:
        raise RuntimeError(f"{what or target.__name__} failed with exit code {proc.exitcode}")
    return result


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write results as deterministic JSON (NumPy scalars turned into Python numbers)."""
    import json

    from simsearch.utils.fs import write_json_atomic

    def plain(o: Any) -> Any:
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
        return str(o)

    write_json_atomic(path, json.loads(json.dumps(obj, default=plain)), force=True)


def flush() -> None:
    """Flush stdout so tables appear in order with child processes' output."""
    sys.stdout.flush()
