"""The study-level metrics of a study's parent run, logged by ``study.tracking`` each time a trial ends.

``STUDY_METRICS`` go at MLflow step = the number of trials ended so far, ``COMPUTE_METRIC`` (the hypervolume again)
at step = their cumulative compute seconds (Tune's ``time_total_s``). The hypervolume's reference point comes from
the task of the first front model (``study.front_models``) and is kept in the parent run's ``REFERENCE_TAG``, so a
resumed driver measures against the same point. Constant work per trial end: the front, not every point.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from mlflow.entities import Metric

from study.front_measures import Member, Reference, front_hypervolume
from study.outcome import COMPLETE, FAILED, PRUNED

__all__ = ["STUDY_METRICS", "COMPUTE_METRIC", "REFERENCE_TAG", "StudyMetrics", "read_reference", "reference_tags"]

# Parent-run metrics, logged when a trial ends at MLflow step = the number of trials ended so far.
STUDY_METRICS = (
    "front_size",
    "hypervolume",
    "best_val_accuracy",
    "trials_complete",
    "trials_pruned",
    "trials_failed",
    "compute_s",
    "driver_trial_end_s",
    "models_logged",
    "model_logging_s",
)
# The hypervolume again, at MLflow step = the trials' cumulative compute seconds (Tune's time_total_s).
COMPUTE_METRIC = "hypervolume_by_compute_s"
# Parent-run tag holding the hypervolume's reference point, "chance_accuracy,learned_params".
REFERENCE_TAG = "hypervolume_reference"


def read_reference(tags: Mapping[str, str]) -> Reference | None:
    """The reference point a parent run's tags hold, if any."""
    if REFERENCE_TAG not in tags:
        return None
    chance, learned = (float(v) for v in tags[REFERENCE_TAG].split(","))
    return Reference(chance, learned)


def reference_tags(reference: Reference) -> dict[str, str]:
    return {REFERENCE_TAG: f"{reference.chance_accuracy},{reference.learned_params}"}


class StudyMetrics:
    """The running totals behind the study metrics: how every ended trial of the study ended (by run id), their
    compute seconds, and the driver's wall time of each trial end in this session."""

    def __init__(self) -> None:
        self.outcomes: dict[str, str] = {}  # run id -> outcome state, every trial of the study that ended
        self.compute_s = 0.0  # the ended trials' compute seconds (Tune's time_total_s), summed
        self.end_seconds: list[float] = []  # driver wall time of each trial end in this session

    def restore(self, parent_metrics: Mapping[str, float], outcomes: Mapping[str, str]) -> None:
        """Take back the totals a stopped driver logged (the parent run's metrics, the runs' ``outcome`` tags)."""
        self.compute_s = float(parent_metrics.get("compute_s", 0.0))
        self.outcomes.update(outcomes)

    def ended(self, run_id: str, state: str, result: Mapping[str, Any] | None) -> bool:
        """The trial of run ``run_id`` ended as ``state`` with last ``result``; True the first time its run ends (a
        trial ending again after a resume was counted, and its study metrics logged, then)."""
        first = run_id not in self.outcomes
        self.outcomes[run_id] = state
        if first:
            self.compute_s += float((result or {}).get("time_total_s") or 0.0)
        return first

    def metrics(
        self,
        seconds: float,
        *,
        front: Sequence[Mapping[str, Any]],
        finals: Iterable[Mapping[str, Any]],
        reference: Reference | None,
        model_seconds: Sequence[float] | None,
    ) -> list[Metric]:
        """The metrics of a trial end that took the driver ``seconds``: ``front`` the final front's rows,
        ``finals`` every completed trial's final row, ``model_seconds`` this session's model logging times (None:
        models are not logged)."""
        self.end_seconds.append(seconds)
        members = [Member(row["run_id"], row["val_accuracy"], row["learned_params"]) for row in front]
        hypervolume = front_hypervolume(members, reference) if reference is not None else (0.0 if not front else None)
        states = list(self.outcomes.values())
        accuracies = [row.get("val_accuracy") for row in finals]
        values = {
            "front_size": len(front),
            "hypervolume": hypervolume,
            "best_val_accuracy": max((v for v in accuracies if v == v), default=None),
            "trials_complete": states.count(COMPLETE),
            "trials_pruned": states.count(PRUNED),
            "trials_failed": states.count(FAILED),
            "compute_s": self.compute_s,
            "driver_trial_end_s": seconds,
            # This driver session's logged models and the wall time they took (rebuild, export, upload).
            "models_logged": None if model_seconds is None else len(model_seconds),
            "model_logging_s": None if model_seconds is None else sum(model_seconds),
        }
        step, timestamp = len(states), int(time.time() * 1000)
        metrics = [Metric(key, float(value), timestamp, step) for key, value in values.items() if value is not None]
        if hypervolume is not None:
            metrics.append(Metric(COMPUTE_METRIC, float(hypervolume), timestamp, int(round(self.compute_s))))
        return metrics
