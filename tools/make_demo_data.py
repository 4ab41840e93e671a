"""Checkout alias of ``simsearch make-demo-data`` (``python -m tools.make_demo_data``)."""
import sys

from simsearch.commands.make_demo_data import main, parse_args  # noqa: F401

if __name__ == "__main__":
    sys.exit(main())
