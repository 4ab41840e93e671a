"""Checkout alias of ``simsearch grid`` (``python -m tools.grid`` or ``python tools/grid.py``)."""
import sys

from simsearch.commands.grid import main, parse_args  # noqa: F401

if __name__ == "__main__":
    sys.exit(main())
