"""Checkout alias of ``simsearch demo`` (``python -m tools.demo`` or ``python tools/demo.py``)."""
import sys

from simsearch.commands.demo import main, parse_args  # noqa: F401

if __name__ == "__main__":
    sys.exit(main())
