"""The Tune callback that snapshots the driver's state beside the trials, in step with Tune's own state.

On ``--resume`` Tune continues from its experiment state at the storage path (the trials, how far each got, which
Optuna trial each is) and the driver from its snapshot (``study.driver_state``: the Optuna db, the MLflow store, the
manifest...). Tune writes its state in each experiment-state save and uploads it after the save, in a thread of its
own; during the save it asks every callback for its state (``Callback.get_state``). This callback takes the snapshot
there and waits for it, so whatever Tune uploads, a snapshot holding as much (the trials asked, the ends told, the
steps logged) is already beside the trials: Tune's stored state is never ahead of the snapshot. The snapshot can be
ahead of it (the driver died while Tune uploaded, or Tune skipped an upload while the previous one ran); the resume
reconciles that: a trial Optuna asked but Tune lost is asked again (``study.searcher``) under its MLflow run
(``study.tracking``), and a step or an end recorded twice is recorded once. (Only a snapshot that failed, or outlasted
``wait_s``, leaves Tune ahead; the tracker then still logs each continuing trial's last saved step.)

Tune's cadence coalesces the snapshots: it saves after every trial checkpoint (each pruning step, with
``CheckpointConfig(num_to_keep=1)``) and otherwise at most every ``TUNE_GLOBAL_CHECKPOINT_S`` (auto: at least 10 s, so
that saving, the snapshot included, takes at most 5 % of the time). A save after which nothing changed (no trial event,
no commit to a database: SQLite's ``data_version``) takes no snapshot. Tune's loop waits while one is written
(milliseconds on a local path); one slower than ``wait_s`` finishes in the background, with a warning.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ray.tune import Callback
from ray.tune.experiment import Trial

from study.driver_state import SnapshotWriter
from study.names import trial_name

__all__ = ["DriverStateSnapshots", "Commits", "WAIT_S"]

logger = logging.getLogger(__name__)

WAIT_S = 120.0  # the longest Tune's save waits for a snapshot


class Commits:
    """Whether anything was committed to some SQLite databases since the last look: ``PRAGMA data_version`` on a
    read-only connection of our own changes whenever another connection, in any process, commits."""

    def __init__(self, paths: Sequence[str | os.PathLike[str]]) -> None:
        self.paths = [Path(path) for path in paths]
        self._connections: dict[Path, tuple[int, sqlite3.Connection]] = {}  # path -> (serial, connection)
        self._opened = 0
        self._seen: tuple[Any, ...] | None = None

    def changed(self) -> bool:
        versions = tuple(self._version(path) for path in self.paths)
        changed, self._seen = versions != self._seen, versions
        return changed

    def _version(self, path: Path) -> tuple[int, int] | None:
        """(connection serial, data_version): a data_version means something only against the same connection's."""
        try:
            if path not in self._connections:
                if not path.is_file():
                    return None
                uri = path.resolve().as_uri() + "?mode=ro"
                self._opened += 1
                self._connections[path] = (self._opened, sqlite3.connect(uri, uri=True, timeout=10))
            serial, connection = self._connections[path]
            return serial, connection.execute("PRAGMA data_version").fetchone()[0]
        except sqlite3.Error:
            self._connections.pop(path, None)
            return None  # unreadable now: the snapshot says why; the next look reconnects

    def close(self) -> None:
        for _, connection in self._connections.values():
            connection.close()
        self._connections.clear()


class DriverStateSnapshots(Callback):
    """Snapshots ``databases`` (SQLite, by online backup) and ``files`` to ``location`` inside Tune's saves."""

    def __init__(
        self,
        location: str,
        *,
        databases: Mapping[str, str | os.PathLike[str]],
        files: Mapping[str, str | os.PathLike[str]],
        wait_s: float = WAIT_S,
    ) -> None:
        self.location = location
        self.databases = {name: str(path) for name, path in databases.items()}
        self.files = {name: str(path) for name, path in files.items()}
        self.wait_s = wait_s
        self._reset()

    def _reset(self) -> None:
        self._writer: SnapshotWriter | None = None  # a thread, started at the first snapshot
        self._commits: Commits | None = None  # open connections
        self._reasons: list[str] = []  # the events since the last snapshot: why the next one is taken

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles the tuner: settings only
        return {key: value for key, value in self.__dict__.items() if not key.startswith("_")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update({"wait_s": WAIT_S, **{k: v for k, v in state.items() if not k.startswith("_")}})
        self._reset()

    @property
    def writer(self) -> SnapshotWriter:
        if self._writer is None:
            self._writer = SnapshotWriter(self.location, databases=self.databases, files=self.files).start()
        return self._writer

    @property
    def commits(self) -> Commits:
        if self._commits is None:
            self._commits = Commits(list(self.databases.values()))
        return self._commits

    # --- Tune's events only say why the next snapshot is taken ---------------------------------------------------

    def setup(self, **info) -> None:
        self._reasons.append("the study starts")

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info) -> None:
        self._reasons.append(f"{trial_name(trial)} started")

    def on_trial_result(self, iteration: int, trials: list[Trial], trial: Trial, result: dict, **info) -> None:
        self._reasons.append(f"{trial_name(trial)} reported step {result.get('step')}")

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info) -> None:
        self._reasons.append(f"{trial_name(trial)} ended")

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info) -> None:
        self._reasons.append(f"{trial_name(trial)} failed")

    # --- the snapshots ---------------------------------------------------------------------------------------------

    def get_state(self) -> None:
        """Called by Tune inside each save of its experiment state, before it uploads it: the snapshot, now."""
        try:
            self.snapshot()
        except Exception as error:  # noqa: BLE001 - Tune's save (and the study) must go on
            logger.warning("snapshot of the driver's state to %s failed: %s", self.location, error)
        return None  # nothing of this callback's goes into Tune's state

    def snapshot(self) -> bool:
        """Take a snapshot and wait for it (at most ``wait_s``) if anything changed since the last one, or the last
        one failed; whether one was taken."""
        changed = self.commits.changed()  # first: a commit from now on is in this snapshot or seen by the next look
        if not (self._reasons or changed or self.writer.last_error):
            return False
        reasons, self._reasons = self._reasons or ["the study's databases changed"], []
        self.writer.mark_dirty(*reasons)
        if not self.writer.flush(self.wait_s):
            logger.warning(
                "the snapshot of the driver's state to %s takes over %.0f s; the study goes on and the snapshot "
                "finishes in the background",
                self.location,
                self.wait_s,
            )
        return True

    def on_experiment_end(self, trials: list[Trial], **info) -> None:
        self.close()

    def close(self) -> None:
        """The final snapshot (it waits for it), after everything the driver recorded; harmless when called again."""
        if self._writer is not None or self._reasons:
            if self._reasons:
                self.writer.mark_dirty(*self._reasons)
                self._reasons = []
            self.writer.close(final_reason="the driver stopped")
            self._writer = None
        if self._commits is not None:
            self._commits.close()
            self._commits = None
