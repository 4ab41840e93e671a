"""Checkout alias of ``simsearch index`` (``python -m tools.index`` or ``python tools/index.py``)."""
import sys

from simsearch.commands.index import main, parse_args  # noqa: F401

if __name__ == "__main__":
    sys.exit(main())
