"""The ``simsearch`` console command.

``simsearch bench NAME [args]`` runs a benchmark shipped in ``simsearch.benchmarks`` (``simsearch
bench --list`` names them); ``python -m simsearch.benchmarks.NAME`` is the same thing.
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from simsearch.utils.errors import user_error

__all__ = ["benchmark_names", "main"]

_NOT_BENCHMARKS = {"common", "compare", "dense_reference"}  # helpers (compare: the library of tools/compare.py)


def benchmark_names() -> list[str]:
    """The benchmarks ``simsearch bench`` can run: every module of simsearch.benchmarks with a main."""
    import simsearch.benchmarks as pkg

    return sorted(m.name for m in pkgutil.iter_modules(pkg.__path__) if m.name not in _NOT_BENCHMARKS)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(prog="simsearch", description="Kaggle-style image retrieval")
    sub = p.add_subparsers(dest="command", required=True)
    bench = sub.add_parser("bench", help="run a shipped benchmark: simsearch bench NAME [its arguments]",
                           add_help=False)
    bench.add_argument("name", nargs="?", help=f"one of: {', '.join(benchmark_names())}")
    bench.add_argument("--list", action="store_true", help="name the benchmarks")
    if not argv or argv[0] in ("-h", "--help"):
        p.print_help()
        return 0 if argv else 2
    args, rest = p.parse_known_args(argv)
    if args.list or args.name is None:
        print("\n".join(benchmark_names()))
        return 0 if args.list else 2
    if args.name not in benchmark_names():
        return user_error(ValueError(f"simsearch bench: unknown benchmark '{args.name}' "
                                     f"(choose from {', '.join(benchmark_names())})"))
    module = importlib.import_module(f"simsearch.benchmarks.{args.name}")
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
