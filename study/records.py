"""A study as MLflow holds it, read back: its trial runs and their points. Read only; ``study.tracking`` writes.

The trials are the experiment's child runs (tag ``PARENT_TAG``); their params hold the trial's settings
(``learner``, ``criterion``, ``rank``, ...) and their metric histories one value per pruning step. A *point* is one
(trial run, pruning step): the table of points (``POINT_COLUMNS``, then ``config/NAME`` per setting) is what the
front book keeps while a study runs (``study.front``), what a resumed driver rebuilds it from, and what
``python -m study.report`` prints.

No torch, Ray or Optuna here; MLflow comes in as the client the caller holds.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Collection, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import pandas as pd

from study.names import FINAL_STEP, OBJECTIVE_METRICS, PARENT_TAG

if TYPE_CHECKING:
    from mlflow import MlflowClient

__all__ = ["POINT_METRICS", "POINT_COLUMNS", "point_row", "points_frame", "child_runs", "load_points"]

# What a trial reports at every pruning step, besides the step itself.
POINT_METRICS = tuple(metric for metric in OBJECTIVE_METRICS if metric != "step")
POINT_COLUMNS = (
    "run_id",
    "run_name",
    "trial_id",
    "status",
    "step",
    "learner",
    "criterion",
    "rank",
    *POINT_METRICS,
    FINAL_STEP,
)
_NUMBER_COLUMNS = (*POINT_METRICS, FINAL_STEP)


def point_row(
    *, run_id: str, run_name: str, trial_id: str, status: str, step: int, settings: Mapping[str, Any], result: Mapping
) -> dict[str, Any]:
    """The point a trial reported (``result``) at ``step``, as a row of the points table (see ``load_points``)."""
    learner, rank = settings.get("learner"), settings.get("rank")
    return {
        "run_id": run_id,
        "run_name": run_name,
        "trial_id": trial_id,
        "status": status,
        "step": step,
        "learner": learner,
        "criterion": settings.get("criterion"),
        "rank": None if learner == "finetune" or rank is None else int(rank),
        **{metric: _number(result.get(metric)) for metric in _NUMBER_COLUMNS},
        **{f"config/{key}": str(value) for key, value in sorted(settings.items())},
    }


def points_frame(rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Point rows as a table: ``POINT_COLUMNS`` (a column no row has is empty), then the ``config/`` columns."""
    frame = pd.DataFrame(list(rows))
    for column in POINT_COLUMNS:
        if column not in frame.columns:
            frame[column] = pd.Series(dtype=float if column in _NUMBER_COLUMNS else object)
    config = sorted(column for column in frame.columns if column not in POINT_COLUMNS)
    return frame[[*POINT_COLUMNS, *config]]


def child_runs(client: MlflowClient, experiment_id: str, parent_run_id: str | None = None) -> list[Any]:
    """The experiment's trial runs: of one parent run, or (None) of every study recorded in the experiment."""
    runs, token = [], None
    where = f"tags.`{PARENT_TAG}` = '{parent_run_id}'" if parent_run_id is not None else ""
    while True:
        page = client.search_runs([experiment_id], filter_string=where, max_results=1000, page_token=token)
        runs += [run for run in page if PARENT_TAG in run.data.tags]
        token = page.token
        if not token:
            return runs


def load_points(
    client: MlflowClient,
    experiment_id: str,
    *,
    statuses: Collection[str] | None = ("FINISHED",),
    parent_run_id: str | None = None,
) -> pd.DataFrame:
    """One row per (child run, pruning step): identity, learner, criterion, rank and every reported metric.

    Columns: ``POINT_COLUMNS`` (rank is empty for fine-pruning; a metric not logged, ``final_step`` included, is
    NaN), then ``config/NAME`` for each of the run's params. The step is the MLflow step of the metric history; a
    logged ``step`` metric, where present, takes precedence. A value logged twice at one step (a resumed trial)
    counts once: the last. ``statuses``: the run statuses kept (None: all); ``parent_run_id``: one study's runs.
    """
    rows: list[dict[str, Any]] = []
    for run in child_runs(client, experiment_id, parent_run_id):
        if statuses is not None and run.info.status not in statuses:
            continue
        params = run.data.params
        learner = params.get("learner")
        identity = {
            "run_id": run.info.run_id,
            "run_name": run.info.run_name,
            "trial_id": run.data.tags.get("trial_id"),
            "status": run.info.status,
            "learner": learner,
            "criterion": params.get("criterion"),
            "rank": None if learner == "finetune" else _integer(params.get("rank")),
        }
        config = {f"config/{name}": value for name, value in sorted(params.items())}
        by_step: dict[int, dict[str, float]] = {}
        for key in ("step", *_NUMBER_COLUMNS):
            if key not in run.data.metrics:
                continue
            history = sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: (m.step, m.timestamp))
            for metric in history:
                by_step.setdefault(metric.step, {})[key] = metric.value
        for mlflow_step, metrics in sorted(by_step.items()):
            reported = metrics.pop("step", math.nan)
            step = int(reported) if math.isfinite(reported) else int(mlflow_step)
            values = {m: metrics.get(m, math.nan) for m in _NUMBER_COLUMNS}
            rows.append({**identity, "step": step, **values, **config})
    points = points_frame(rows)
    points["rank"] = points["rank"].astype("Int64")
    return points.sort_values(["run_name", "run_id", "step"], kind="mergesort").reset_index(drop=True)


def _integer(text: str | None) -> int | None:
    try:
        return int(float(text)) if text not in (None, "", "None") else None
    except ValueError:
        return None


def _number(value: Any) -> float:
    return float(value) if isinstance(value, numbers.Real) and not isinstance(value, bool) else math.nan
