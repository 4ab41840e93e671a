"""Checkout alias of ``simsearch infer`` (``python -m tools.infer`` or ``python tools/infer.py``)."""
import sys

from simsearch.commands.infer import main, parse_args  # noqa: F401

if __name__ == "__main__":
    sys.exit(main())
