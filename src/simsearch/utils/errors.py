"""What every command does with bad input: one clear line and exit status 2, not a traceback."""
from __future__ import annotations

import os
import sys

__all__ = ["USER_ERRORS", "user_error"]

# Missing or existing files and bad values (ConfigError is a ValueError): the user's to fix.
USER_ERRORS = (FileNotFoundError, FileExistsError, ValueError)


def user_error(exc: BaseException) -> int:
    """Print ``error: ...`` instead of a traceback (``SIMSEARCH_DEBUG=1`` re-raises it)."""
    if os.environ.get("SIMSEARCH_DEBUG"):
        raise exc
    print(f"error: {exc}", file=sys.stderr)
    return 2
