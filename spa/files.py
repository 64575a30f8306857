"""Writing a file so that a reader never sees it half-written (no torch: the study driver imports this)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path

__all__ = ["write_atomically"]


def write_atomically(path: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """``write(temporary_path)`` beside ``path``, then rename it over ``path`` (atomic on one file system).

    The temporary file lives in the target's directory because ``os.replace`` is only atomic within one file
    system; it is removed if ``write`` fails (or the process is interrupted), and the old ``path`` stays intact.
    ``write`` creates the temporary file itself, so the result has the permissions of any file this process
    creates (``mkstemp`` would make it private, 0600: a cache shared by several users could not read it).
    Creates the parent directory. Returns ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:12]}.tmp")
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path
