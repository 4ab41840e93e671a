"""Checkout alias of ``simsearch export`` (``python -m tools.export`` or ``python tools/export.py``)."""
import sys

from simsearch.commands.export import main, parse_args  # noqa: F401

if __name__ == "__main__":
    sys.exit(main())
