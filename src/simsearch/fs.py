"""Folder outputs that appear whole or not at all."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

__all__ = ["swap_into_place"]


def swap_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished build ``tmp`` onto ``out``; an old ``out`` is moved aside first, then deleted.

    ``tmp`` must be a sibling of ``out`` so that the renames stay on one file system.
    """
    old = None
    if out.exists() or out.is_symlink():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        out.rename(old / out.name)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old)
