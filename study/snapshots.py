"""The Tune callback that keeps the driver's state safe beside the trials: ``study.driver_state`` does the work.

Every event after which the Optuna study or the MLflow store holds something new (a trial added: an Optuna trial was
asked, seen at the end of Tune's step that asked it; a trial started: an MLflow run was created; a trial reported a
step; a trial ended and was told) marks the state dirty;
Tune's event loop returns at once, and ``SnapshotWriter``'s thread takes the snapshot, coalescing the marks that
arrive meanwhile. The experiment's end takes the final one. Tune calls the callbacks after it has told the search
algorithm (Optuna) and in the order given, so this callback goes after the MLflow tracker: a snapshot marked by an
event holds what the event wrote.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from ray.tune import Callback
from ray.tune.experiment import Trial

from study.driver_state import SnapshotWriter
from study.names import trial_name

__all__ = ["DriverStateSnapshots"]


class DriverStateSnapshots(Callback):
    """Snapshots ``databases`` (SQLite, by online backup) and ``files`` to ``location`` as the study goes."""

    def __init__(
        self,
        location: str,
        *,
        databases: Mapping[str, str | os.PathLike[str]],
        files: Mapping[str, str | os.PathLike[str]],
    ) -> None:
        self.location = location
        self.databases = {name: str(path) for name, path in databases.items()}
        self.files = {name: str(path) for name, path in files.items()}
        self._writer: SnapshotWriter | None = None
        self._trials_seen = 0

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles the tuner: keep settings only (no thread)
        return {**self.__dict__, "_writer": None, "_trials_seen": 0}

    @property
    def writer(self) -> SnapshotWriter:
        if self._writer is None:
            self._writer = SnapshotWriter(self.location, databases=self.databases, files=self.files).start()
        return self._writer

    def setup(self, **info) -> None:
        self.writer.mark_dirty("the study starts")

    def on_step_end(self, iteration: int, trials: list[Trial], **info) -> None:
        # Tune asks the searcher for new trials inside its step (Optuna writes a RUNNING trial) and may save its
        # experiment state in the same step: snapshot the Optuna trial as soon as the step ends.
        if len(trials) > self._trials_seen:
            self._trials_seen = len(trials)
            self.writer.mark_dirty(f"{trial_name(trials[-1])} added")

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info) -> None:
        self.writer.mark_dirty(f"{trial_name(trial)} started")

    def on_trial_result(self, iteration: int, trials: list[Trial], trial: Trial, result: dict, **info) -> None:
        self.writer.mark_dirty(f"{trial_name(trial)} reported step {result.get('step')}")

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info) -> None:
        self.writer.mark_dirty(f"{trial_name(trial)} ended")

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info) -> None:
        self.writer.mark_dirty(f"{trial_name(trial)} failed")

    def on_experiment_end(self, trials: list[Trial], **info) -> None:
        self.close()

    def close(self) -> None:
        """The final snapshot (it waits for it); harmless when called again."""
        if self._writer is not None:
            self._writer.close(final_reason="the driver stopped")
            self._writer = None
