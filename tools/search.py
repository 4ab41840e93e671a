"""Checkout alias of ``simsearch search`` (``python -m tools.search`` or ``python tools/search.py``)."""
import sys

from simsearch.commands.search import main, parse_args  # noqa: F401

if __name__ == "__main__":
    sys.exit(main())
