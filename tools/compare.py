"""Checkout alias of ``simsearch compare`` (``python -m tools.compare`` or ``python tools/compare.py``)."""
import sys

from simsearch.commands.compare import main, parse_args  # noqa: F401

if __name__ == "__main__":
    sys.exit(main())
