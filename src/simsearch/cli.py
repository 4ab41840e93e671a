"""The ``simsearch`` console command: ``simsearch COMMAND [its arguments]``.

Each command is ``simsearch.commands.NAME.main`` (``make-demo-data`` is ``make_demo_data``); the
checkout's ``tools/NAME.py`` are aliases of the same functions. ``simsearch bench NAME [args]`` runs a
benchmark shipped in ``simsearch.benchmarks`` (``simsearch bench --list`` names them); ``python -m
simsearch.benchmarks.NAME`` is the same thing. Under several processes use ``accelerate launch -m
simsearch.commands.train ...`` (a module, so no path into the installed package is needed).
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from simsearch.utils.errors import user_error

__all__ = ["COMMANDS", "benchmark_names", "main"]

_NOT_BENCHMARKS = {"common", "compare", "dense_reference"}  # helpers (compare: the library of simsearch compare)

# What `simsearch --help` lists, without importing the commands (some pull in torch or gradio);
# tests/tools/test_cli.py checks that it names every module of simsearch.commands.
COMMANDS = {
    "train": "train an embedding model from a config (shipped name or path) and key=value overrides",
    "infer": "embed query and gallery, search, post-process and write a submission",
    "score": "score a submission against ground truth and add it to the leaderboard",
    "index": "build or extend a search index (FAISS folder or Qdrant collection) from images",
    "search": "search an index with an image or a text",
    "app": "serve the Gradio search demo over an index",
    "export": "export a checkpoint's embedding model to ONNX",
    "compare": "train and compare approaches on one competition, report in markdown",
    "demo": "the whole competition loop offline: data, train, before/after table, submission, score",
    "grid": "draw a result grid of a submission",
    "inshop": "lay DeepFashion In-shop out as a competition folder",
    "make-demo-data": "build the offline demo competition from scikit-image's photos",
    "bench": "run a shipped benchmark: simsearch bench NAME [its arguments] (--list names them)",
}


def benchmark_names() -> list[str]:
    """The benchmarks ``simsearch bench`` can run: every module of simsearch.benchmarks with a main."""
    import simsearch.benchmarks as pkg

    return sorted(m.name for m in pkgutil.iter_modules(pkg.__path__) if m.name not in _NOT_BENCHMARKS)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="simsearch", description="Kaggle-style image retrieval: train, infer, "
                                "re-rank and score. `simsearch COMMAND --help` shows a command's options.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, text in COMMANDS.items():
        sub.add_parser(name, help=text, add_help=False)
    return p


def _bench(rest: list[str]) -> int:
    names = benchmark_names()
    if rest[:1] == ["--list"]:
        print("\n".join(names))
        return 0
    if not rest or rest[0] in ("-h", "--help"):
        print("usage: simsearch bench NAME [its arguments]; NAME is one of:\n  " + "\n  ".join(names))
        return 0 if rest else 2
    name, rest = rest[0], rest[1:]
    if name not in names:
        return user_error(ValueError(f"simsearch bench: unknown benchmark '{name}' "
                                     f"(choose from {', '.join(names)})"))
    module = importlib.import_module(f"simsearch.benchmarks.{name}")
    return _run(module.main, f"simsearch bench {name}", rest)


def _run(fn, prog: str, rest: list[str]) -> int:
    """Call a command's ``main(rest)`` with ``prog`` as argv[0], so its --help and usage say it."""
    saved = sys.argv[0]
    sys.argv[0] = prog
    try:
        return int(fn(rest) or 0)
    finally:
        sys.argv[0] = saved


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = _parser()
    if not argv or argv[0] in ("-h", "--help"):
        p.print_help()
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        p.parse_args(argv[:1])  # exits 2 naming the valid choices
    if command == "bench":
        return _bench(rest)
    module = importlib.import_module(f"simsearch.commands.{command.replace('-', '_')}")
    return _run(module.main, f"simsearch {command}", rest)


if __name__ == "__main__":
    sys.exit(main())
