"""Checkout alias of ``simsearch score`` (``python -m tools.score`` or ``python tools/score.py``)."""
import sys

from simsearch.commands.score import main, parse_args  # noqa: F401

if __name__ == "__main__":
    sys.exit(main())
