"""Checkout alias of ``simsearch train`` (``python -m tools.train`` or ``python tools/train.py``)."""
import sys

from simsearch.commands.train import main, parse_args  # noqa: F401

if __name__ == "__main__":
    sys.exit(main())
