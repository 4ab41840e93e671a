"""The ``simsearch COMMAND`` commands: each module's ``main(argv=None)`` (see :mod:`simsearch.cli`).

Here too: the options that name an index, shared by ``index``, ``search`` and ``app``.
"""
from __future__ import annotations

import argparse
from typing import Any

__all__ = ["BACKENDS", "add_index_location", "index_location"]

#: faiss: an index folder (simsearch.retrieval.store); qdrant: a collection (simsearch.retrieval.vectordb).
BACKENDS = ("faiss", "qdrant")


def add_index_location(p: argparse.ArgumentParser, folder_flag: str, folder_help: str) -> None:
    """``folder_flag`` (an index folder: the default backend, as before) or ``--backend qdrant --uri
    URI --collection NAME``; :func:`index_location` checks the mix after parsing."""
    p.add_argument(folder_flag, default=None, help=f"{folder_help} (--backend faiss, the default)")
    p.add_argument("--backend", default="faiss", choices=BACKENDS,
                   help="faiss: an index folder; qdrant: a Qdrant collection (--uri, --collection)")
    p.add_argument("--uri", default=None,
                   help="--backend qdrant: http(s)://HOST:6333 (a server) or a folder (Qdrant local mode)")
    p.add_argument("--collection", default=None, help="--backend qdrant: the collection's name")


def index_location(p: argparse.ArgumentParser, args: argparse.Namespace, folder_flag: str) -> Any:
    """The folder (str) or the collection (a ``vectordb.DbLocation``) the options name; a wrong mix
    of options is a usage error (exit status 2)."""
    folder = getattr(args, folder_flag.lstrip("-").replace("-", "_"))
    if args.backend == "faiss":
        if args.uri is not None or args.collection is not None:
            p.error("--uri and --collection go with --backend qdrant")
        if folder is None:
            p.error(f"{folder_flag} is required (or --backend qdrant --uri URI --collection NAME)")
        return folder
    if folder is not None:
        p.error(f"{folder_flag} names an index folder (--backend faiss); with --backend {args.backend} "
                "give --uri and --collection")
    if not args.uri or not args.collection:
        p.error(f"--backend {args.backend} needs --uri and --collection")
    from simsearch.retrieval.vectordb import DbLocation  # here: --help must not import torch

    return DbLocation(args.uri, args.collection, args.backend)
