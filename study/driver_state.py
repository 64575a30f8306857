"""The driver's own state, kept beside the trials so that a study outlives the machine its driver runs on.

Ray Tune keeps trial results and checkpoints at the storage path (a shared path or ``s3://``), but the driver keeps
the Optuna study (SQLite), the study manifest and the space file on its own disk, and the MLflow store may be a
SQLite file there too. ``SnapshotWriter`` copies them to ``<storage>/<name>/driver_state`` and ``restore_snapshot``
brings them back on a machine that has none of them (``--resume`` after the head node was replaced).

A snapshot is consistent and atomic:

- each SQLite database is copied with SQLite's online backup API (``sqlite3.Connection.backup``), which reads a
  committed state of the live database, never a half-written file as a plain file copy can;
- each snapshot is a new generation directory (``gen-000007/``) holding every file, and ``latest.json``, written
  last (temporary name, then a move), names the generation and each file's size and SHA-256: a reader sees a
  whole snapshot or the previous one, also on object stores, where a single object write is atomic. The
  generation before the latest is kept as well; older ones are deleted.

The storage is reached through ``pyarrow.fs``, as Ray Tune reaches it (``pyarrow.fs.FileSystem.from_uri``): a
local path, ``file://``, ``s3://``, ``gs://``, ...

``SnapshotWriter`` takes the snapshots in one background thread: ``mark_dirty`` returns at once, marks that arrive
while a snapshot is being taken are coalesced into the next one (at most one is in flight), ``flush`` waits, with a
timeout, for the marks so far, and ``close`` takes the final one. When to snapshot, and whether to wait, is the
caller's (``study.snapshots``: inside each of Tune's experiment-state saves, waiting, so that Tune's state at the
storage path is never ahead of the snapshot).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sqlite3
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from spa.files import write_atomically

__all__ = [
    "LATEST",
    "SNAPSHOT_DIR",
    "SnapshotError",
    "Snapshot",
    "SnapshotWriter",
    "snapshot_location",
    "write_snapshot",
    "read_latest",
    "restore_snapshot",
    "snapshot_text",
    "sqlite_backup",
    "sqlite_problem",
    "sqlite_path",
]

logger = logging.getLogger(__name__)

SNAPSHOT_DIR = "driver_state"  # under <storage path>/<study name>
LATEST = "latest.json"
FORMAT = 1
_KEEP_GENERATIONS = 2  # the latest and the one before it
_CHUNK = 1 << 20


class SnapshotError(RuntimeError):
    """A snapshot that cannot be written, read or restored; one line."""


@dataclass(frozen=True)
class Snapshot:
    """What ``latest.json`` says: the generation and, per file name, its size, SHA-256 and whether it is SQLite."""

    location: str
    generation: int
    created: float
    files: Mapping[str, Mapping[str, Any]]
    reasons: tuple[str, ...] = ()

    @property
    def directory(self) -> str:
        return _join(self.location, _generation_dir(self.generation))


def snapshot_location(trial_storage: str) -> str:
    """Where the snapshots of a study whose trials live at ``trial_storage`` (``<storage path>/<name>``) go."""
    return _join(trial_storage, SNAPSHOT_DIR)


def sqlite_path(url: str) -> Path | None:
    """The file of an SQLAlchemy/MLflow ``sqlite:///PATH`` URL; None for any other URL (a server, Postgres...)."""
    prefix = "sqlite:///"
    if not url.startswith(prefix):
        return None
    path = url[len(prefix) :].split("?", 1)[0]
    return None if path in ("", ":memory:") else Path(path)


# --- writing -------------------------------------------------------------------------------------------------------


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


def write_snapshot(
    location: str,
    *,
    databases: Mapping[str, str | os.PathLike[str]],
    files: Mapping[str, str | os.PathLike[str]],
    generation: int | None = None,
    reasons: tuple[str, ...] = (),
) -> Snapshot:
    """Write one snapshot generation at ``location``: SQLite ``databases`` by online backup, plain ``files`` as they
    are (each written atomically by its writer), then ``latest.json``. Sources that do not exist are left out.

    ``generation`` defaults to one more than the latest at ``location``.
    """
    fs, root = _filesystem(location)
    if generation is None:
        latest = read_latest(location)
        generation = 1 if latest is None else latest.generation + 1
    directory = f"{root}/{_generation_dir(generation)}"
    fs.create_dir(directory, recursive=True)
    entries: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="spa-snapshot-") as scratch:
        for name, source in databases.items():
            if not Path(source).is_file():
                continue
            copy = Path(scratch) / name
            sqlite_backup(source, copy)
            entries[name] = {**_upload(fs, copy, f"{directory}/{name}"), "sqlite": True}
        for name, source in files.items():
            if not Path(source).is_file():
                continue
            # Read once into memory: the writer may replace the file meanwhile; what we hash is what we upload.
            data = Path(source).read_bytes()
            copy = Path(scratch) / name
            copy.write_bytes(data)
            entries[name] = {**_upload(fs, copy, f"{directory}/{name}"), "sqlite": False}
    snapshot = Snapshot(location, generation, time.time(), entries, tuple(reasons))
    manifest = {
        "format": FORMAT,
        "generation": generation,
        "created": snapshot.created,
        "directory": _generation_dir(generation),
        "files": entries,
        "reasons": list(reasons),
    }
    _write_text(fs, f"{root}/{LATEST}", json.dumps(manifest, indent=2) + "\n")
    _prune_generations(fs, root, keep_from=generation - _KEEP_GENERATIONS + 1)
    return snapshot


def _upload(fs: pafs.FileSystem, local: Path, path: str) -> dict[str, Any]:
    digest = hashlib.sha256()
    size = 0
    with open(local, "rb") as source, fs.open_output_stream(path) as out:
        while chunk := source.read(_CHUNK):
            digest.update(chunk)
            out.write(chunk)
            size += len(chunk)
    return {"size": size, "sha256": digest.hexdigest()}


def _write_text(fs: pafs.FileSystem, path: str, text: str) -> None:
    """Write under a temporary name, then move over ``path``: a rename on a local disk; on an object store the
    object at ``path`` is replaced whole."""
    temporary = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
    with fs.open_output_stream(temporary) as out:
        out.write(text.encode())
    fs.move(temporary, path)


def _prune_generations(fs: pafs.FileSystem, root: str, *, keep_from: int) -> None:
    for info in fs.get_file_info(pafs.FileSelector(root, allow_not_found=True)):
        generation = _generation_number(info.base_name)
        if info.type == pafs.FileType.Directory and generation is not None and generation < keep_from:
            fs.delete_dir(info.path)


# --- reading and restoring -----------------------------------------------------------------------------------------


def read_latest(location: str) -> Snapshot | None:
    """The latest snapshot at ``location``; None when there is none. An unreadable ``latest.json`` is an error."""
    fs, root = _filesystem(location)
    path = f"{root}/{LATEST}"
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    try:
        with fs.open_input_stream(path) as stream:
            manifest = json.loads(stream.read().decode())
        return Snapshot(
            location=location,
            generation=int(manifest["generation"]),
            created=float(manifest["created"]),
            files=dict(manifest["files"]),
            reasons=tuple(manifest.get("reasons", ())),
        )
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as error:
        raise SnapshotError(f"{_join(location, LATEST)} is unreadable ({error}); it is not a snapshot") from None


def restore_snapshot(
    snapshot: Snapshot, targets: Mapping[str, str | os.PathLike[str]], *, overwrite: bool = False
) -> list[Path]:
    """Copy the files of ``snapshot`` named in ``targets`` to their local paths; returns the paths written.

    All or nothing: every file is fetched into a scratch directory and checked against its size and SHA-256 (a
    database also with SQLite's ``quick_check``) before any is moved into place, each atomically. A target that
    exists is left alone unless ``overwrite``; a name the snapshot lacks is skipped.
    """
    chosen = {
        name: Path(target)
        for name, target in targets.items()
        if name in snapshot.files and (overwrite or not Path(target).exists())
    }
    with tempfile.TemporaryDirectory(prefix="spa-restore-") as scratch:
        for name in chosen:
            _fetch(snapshot, name, Path(scratch) / name)
        for name, target in chosen.items():
            write_atomically(target, lambda temporary, name=name: shutil.copyfile(Path(scratch) / name, temporary))
    return list(chosen.values())


def snapshot_text(snapshot: Snapshot, name: str) -> str | None:
    """The file ``name`` of ``snapshot`` as text, checked as ``restore_snapshot`` checks it; None if it has none."""
    if name not in snapshot.files:
        return None
    with tempfile.TemporaryDirectory(prefix="spa-restore-") as scratch:
        _fetch(snapshot, name, Path(scratch) / name)
        return (Path(scratch) / name).read_text()


def _fetch(snapshot: Snapshot, name: str, destination: Path) -> None:
    """Download the file ``name`` of ``snapshot`` to ``destination`` and check it; ``SnapshotError`` if it is bad."""
    fs, root = _filesystem(snapshot.location)
    entry, where = snapshot.files[name], _join(snapshot.directory, name)
    digest = hashlib.sha256()
    try:
        with fs.open_input_stream(f"{root}/{_generation_dir(snapshot.generation)}/{name}") as stream:
            with open(destination, "wb") as out:
                while chunk := stream.read(_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
    except FileNotFoundError:
        raise SnapshotError(f"{where} is missing; the snapshot is damaged") from None
    size = destination.stat().st_size
    if size != entry["size"] or digest.hexdigest() != entry["sha256"]:
        raise SnapshotError(
            f"{where} does not match {LATEST} ({size} bytes, expected {entry['size']}); the snapshot is damaged"
        )
    problem = sqlite_problem(destination) if entry.get("sqlite") else None
    if problem:
        raise SnapshotError(f"{where} is not a usable database: {problem}")


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


# --- the background writer -----------------------------------------------------------------------------------------


class SnapshotWriter:
    """Takes snapshots in one background thread whenever ``mark_dirty`` was called; see the module docstring.

    A snapshot that fails is logged and retried on the next mark: a study is never stopped by its backup.
    """

    def __init__(
        self,
        location: str,
        *,
        databases: Mapping[str, str | os.PathLike[str]],
        files: Mapping[str, str | os.PathLike[str]],
        min_interval_s: float = 0.0,
    ) -> None:
        self.location = location
        self.databases = dict(databases)
        self.files = dict(files)
        self.min_interval_s = min_interval_s
        self.last: Snapshot | None = None
        self.last_error: str | None = None
        self._condition = threading.Condition()
        self._reasons: list[str] = []
        self._marks = 0  # marks so far
        self._done = 0  # marks covered by a finished snapshot attempt
        self._closing = False
        self._thread: threading.Thread | None = None

    def start(self) -> SnapshotWriter:
        latest = read_latest(self.location)  # continue the generation count of a resumed study
        self._generation = 0 if latest is None else latest.generation
        self._thread = threading.Thread(target=self._loop, name="driver-state-snapshots", daemon=True)
        self._thread.start()
        return self

    def mark_dirty(self, *reasons: str) -> None:
        """Ask for a snapshot, saying why; returns at once."""
        with self._condition:
            self._marks += 1
            self._reasons.extend(reasons)
            self._condition.notify_all()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every mark so far is covered by a snapshot attempt; False on timeout."""
        with self._condition:
            target = self._marks
            return self._condition.wait_for(lambda: self._done >= target, timeout)

    def close(self, *, final_reason: str = "driver ends", timeout: float | None = 300) -> None:
        """The final snapshot, then stop the thread."""
        if self._thread is None:
            return
        self.mark_dirty(final_reason)
        self.flush(timeout)
        with self._condition:
            self._closing = True
            self._condition.notify_all()
        self._thread.join(timeout)
        self._thread = None

    def _loop(self) -> None:
        last_started = 0.0
        while True:
            with self._condition:
                self._condition.wait_for(lambda: self._marks > self._done or self._closing)
                if self._marks == self._done and self._closing:
                    return
            wait = last_started + self.min_interval_s - time.monotonic()
            if wait > 0:
                time.sleep(wait)  # marks arriving meanwhile join this snapshot
            with self._condition:
                covered, reasons, self._reasons = self._marks, tuple(self._reasons), []
            last_started = time.monotonic()
            try:
                self.last = write_snapshot(
                    self.location,
                    databases=self.databases,
                    files=self.files,
                    generation=self._generation + 1,
                    reasons=reasons,
                )
                self._generation += 1
                self.last_error = None
            except Exception as error:  # noqa: BLE001 - the study goes on; the next mark retries
                self.last_error = f"{type(error).__name__}: {error}"
                logger.warning("snapshot of the driver's state to %s failed: %s", self.location, self.last_error)
            with self._condition:
                self._done = covered
                self._condition.notify_all()


# --- paths ---------------------------------------------------------------------------------------------------------


def _filesystem(location: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem and path of a local path or URI, as Ray Tune resolves its storage path."""
    try:
        fs, path = pafs.FileSystem.from_uri(location if "://" in location else str(Path(location).resolve()))
    except (ValueError, OSError) as error:  # pyarrow's ArrowInvalid is a ValueError
        raise SnapshotError(f"{location}: {error}") from None
    return fs, path.rstrip("/")


def _join(location: str, name: str) -> str:
    return f"{location.rstrip('/')}/{name}"


def _generation_dir(generation: int) -> str:
    return f"gen-{generation:06d}"


def _generation_number(name: str) -> int | None:
    if name.startswith("gen-") and name[4:].isdigit():
        return int(name[4:])
    return None
