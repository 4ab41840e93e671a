"""Checkout alias of ``simsearch app`` (``python -m tools.app`` or ``python tools/app.py``)."""
import sys

from simsearch.commands.app import main, parse_args  # noqa: F401

if __name__ == "__main__":
    sys.exit(main())
