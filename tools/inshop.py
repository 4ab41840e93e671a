"""Checkout alias of ``simsearch inshop`` (``python -m tools.inshop`` or ``python tools/inshop.py``)."""
import sys

from simsearch.commands.inshop import main, parse_args  # noqa: F401

if __name__ == "__main__":
    sys.exit(main())
