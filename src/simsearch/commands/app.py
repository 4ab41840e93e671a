"""Serve a search demo: ``simsearch app --index INDEX_DIR [--top-k 5] [--host 127.0.0.1] [--port 7860]
[--allow-private-urls] [--max-upload-mb 10]``.

Upload an image or paste an http(s) URL to see the top k images of the index with their scores;
indexes built from an OpenCLIP checkpoint also take a text query. Needs the ``app`` extra
(``pip install -e '.[app]'``). Binds to 127.0.0.1 unless ``--host`` says otherwise. ``--backend qdrant
--uri PATH_OR_URL --collection NAME`` in place of ``--index`` serves a Qdrant collection.
"""
from __future__ import annotations

import argparse
import ipaddress
import sys

from simsearch.commands import add_index_location, index_location
from simsearch.utils.errors import USER_ERRORS, add_debug_flag, user_error


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_index_location(p, "--index", "index folder made by simsearch index build")
    p.add_argument("--top-k", type=int, default=5, help="number of results shown")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 exposes it to the network)")
    p.add_argument("--port", type=int, default=7860, help="port to listen on")
    p.add_argument("--allow-private-urls", action="store_true",
                   help="let URL queries reach private, loopback and link-local addresses")
    p.add_argument("--max-upload-mb", type=float, default=10.0, help="size cap for uploads and fetched URLs")
    p.add_argument("--url-timeout", type=float, default=10.0, help="seconds allowed for fetching a URL")
    p.add_argument("--max-pixels", type=int, default=50_000_000, help="pixel cap for query images")
    p.add_argument("--checkpoint", default=None, help="checkpoint folder, if it moved since the index was built")
    add_debug_flag(p)
    args = p.parse_args(argv)
    args.location = index_location(p, args, "--index")
    return args


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        from simsearch.apps.app import AppSettings, SearchService, launch_app

        settings = AppSettings(top_k=args.top_k, max_upload_mb=args.max_upload_mb,
                               allow_private_urls=args.allow_private_urls, url_timeout=args.url_timeout,
                               max_pixels=args.max_pixels)
        if not 0 < args.port < 65536:
            raise ValueError(f"--port must be in 1..65535, got {args.port}")
        service = SearchService(args.location, settings, checkpoint=args.checkpoint)
        if not _is_loopback(args.host):
            print(f"warning: listening on {args.host}: anyone who can reach this machine can use the app",
                  file=sys.stderr)
        launch_app(service, host=args.host, port=args.port)
    except USER_ERRORS as exc:
        return user_error(exc, args.debug)
    return 0


if __name__ == "__main__":
    sys.exit(main())
