"""SQLite files of the driver (the Optuna study, a local MLflow store): the file a ``sqlite:///`` URL names, a
consistent copy of a live database, and whether a file is a sound database. Standard library only.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

__all__ = ["sqlite_backup", "sqlite_path", "sqlite_problem"]


def sqlite_path(url: str) -> Path | None:
    """The file of an SQLAlchemy/MLflow ``sqlite:///PATH`` URL; None for any other URL (a server, Postgres...)."""
    prefix = "sqlite:///"
    if not url.startswith(prefix):
        return None
    path = url[len(prefix) :].split("?", 1)[0]
    return None if path in ("", ":memory:") else Path(path)


def sqlite_backup(source: str | os.PathLike[str], destination: str | os.PathLike[str]) -> None:
    """A consistent copy of the live SQLite database ``source`` at ``destination``, by SQLite's online backup.

    The source is opened read-only; the whole database is copied in one step (``pages=-1``), under a read lock, so
    the copy is one committed state even while the study writes (a writer holding the lock makes the step retry).
    """
    source_uri = Path(source).resolve().as_uri() + "?mode=ro"
    reader = sqlite3.connect(source_uri, uri=True, timeout=60)
    try:
        writer = sqlite3.connect(str(destination))
        try:
            reader.backup(writer, pages=-1)
        finally:
            writer.close()
    finally:
        reader.close()


def sqlite_problem(path: str | os.PathLike[str]) -> str | None:
    """Why the file at ``path`` is not a sound SQLite database (a phrase: "damaged (...)", "an empty file", ...),
    or None when it is."""
    path = Path(path)
    try:
        with open(path, "rb") as file:
            header = file.read(16)
    except OSError as error:
        return error.strerror or str(error)
    if header != b"SQLite format 3\x00":
        return "not an SQLite database (bad header)" if header else "an empty file"
    try:
        connection = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)
        try:
            (verdict,) = connection.execute("PRAGMA quick_check(1)").fetchone()
        finally:
            connection.close()
    except sqlite3.DatabaseError as error:
        return f"damaged ({error})"
    return None if verdict == "ok" else f"damaged ({verdict})"
