"""The MLflow callback of a study (a Tune callback on the driver): the one writer of a study to MLflow, through
small helpers that only it uses.

One experiment per study (by default) and one parent run per study (tag ``study_id``): ``study.mlflow_runs``; one
child run per trial, with its tags, params and one metric value per pruning step: ``study.trial_runs``. A trial
ends FINISHED, KILLED (stopped early by the scheduler: tag ``stopped_by``) or FAILED (tag ``error``, the
exception's line: ``study.trial_error``), judged as Optuna is told (``study.outcome.judge``); a completed trial
that breaks the space's constraints is tagged ``constraint_violated`` (the reason) and is on no front. Every time a
trial ends the front book (``study.front``) updates the fronts incrementally and the completed runs whose
membership changed are tagged ``pareto=true`` or ``false``; the front files (in the study directory, logged as
artifacts of the parent run) are written by a background thread (``study.front_files``), at most every few seconds
and always at the study's end (Ctrl-C included), so the event loop never waits for a plot. Recording results needs
neither torch nor ``spa``'s model code: the experiment's default settings come in as plain data (``defaults``);
torch is imported only to rebuild a front member's model.

Front members become logged models (``study.front_models``: the step's checkpoint is copied from the trial's
storage when it arrives, ``on_checkpoint``, and logged when a trial ends). When a trial ends the parent run gets
the study metrics (``study.study_metrics``: front size, hypervolume, trial counts, compute seconds).

Resuming: Tune restores this callback from the pickled tuner, so it holds plain settings until ``setup``; there it
finds the parent and child runs of the study in MLflow again (``study.records``), reuses the run of every trial
that continues (and of an Optuna trial asked again after Tune lost it, found by its number), skips steps already
logged, and closes runs left RUNNING by a stopped driver whose trial will not continue.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient
from ray.tune import Callback
from ray.tune.experiment import Trial

from study.constraints import VIOLATION, Constraints
from study.front import FrontBook
from study.front_files import FrontWriter
from study.front_models import FrontModels
from study.mlflow_runs import delete_tags, open_experiment, open_parent_run, set_tags
from study.names import FINAL_STEP, trial_name
from study.outcome import COMPLETE, FAILED, PRUNED, judge, one_line
from study.records import load_points, point_row
from study.study_metrics import StudyMetrics, read_reference, reference_tags
from study.trial_error import error_line
from study.trial_runs import TrialRuns

__all__ = ["StudyTracker"]

_STATUS = {COMPLETE: "FINISHED", PRUNED: "KILLED", FAILED: "FAILED"}
_LIVE = (Trial.PENDING, Trial.RUNNING, Trial.PAUSED)


class StudyTracker(Callback):
    """Records a study in MLflow; see the module docstring."""

    def __init__(
        self,
        *,
        tracking_uri: str,
        experiment_name: str,
        study_name: str,
        study_id: str,
        study_dir: str | Path,
        metrics: Sequence[str],
        modes: Sequence[str],
        scheduler: str,
        params: Mapping[str, Any],
        tags: Mapping[str, str],
        defaults: Mapping[str, Any] | None = None,
        constraints: Constraints | None = None,
        register_model: str | None = None,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.experiment_name = experiment_name
        self.study_name = study_name
        self.study_id = study_id
        self.study_dir = Path(study_dir)
        self.metrics = list(metrics)
        self.modes = list(modes)
        self.scheduler = scheduler
        self.params = dict(params)
        self.tags = dict(tags)
        # The flat settings of the default experiment (``ExperimentConfig().to_flat()``): a run's params are these
        # with the trial's own on top, so they say how to repeat it.
        self.defaults = dict(defaults or {})
        self.constraints = constraints or Constraints()  # a trial that breaks one is tagged and on no front
        self.register_model = register_model
        self._reset()

    def _reset(self) -> None:
        self._client: MlflowClient | None = None
        self.experiment_id: str | None = None
        self.parent_run_id: str | None = None
        self._runs: TrialRuns | None = None  # the trials' runs, from setup
        self._book = FrontBook(self.metrics, self.modes, self.constraints)
        self._writer: FrontWriter | None = None  # started in setup: a thread, never pickled
        self._started: set[str] = set()  # trial_ids started in this session
        self._ended: set[str] = set()  # trial_ids recorded as ended in this session
        self._reconciled = False
        self._total = 0
        self._models: FrontModels | None = None
        self._totals = StudyMetrics()  # the study metrics' running totals

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles the tuner: keep settings only
        state = self.__dict__.copy()
        for key in [k for k in state if k.startswith("_") or k in ("experiment_id", "parent_run_id")]:
            del state[key]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        # A tuner pickled before defaults / register_model / constraints existed.
        self.__dict__.update({"defaults": {}, "register_model": None, "constraints": Constraints(), **state})
        self._reset()

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    # --- Tune hooks ---------------------------------------------------------------------------------------------

    def setup(self, stop=None, num_samples=None, total_num_samples=None, **info) -> None:
        self._total = int(total_num_samples or num_samples or 0)
        self.experiment_id = open_experiment(
            self.client, self.experiment_name, tracking_uri=self.tracking_uri, study_dir=self.study_dir
        )
        parent_tags = {
            **self.tags,
            "study_name": self.study_name,
            "study_id": self.study_id,
            "study_role": "parent",
            "num_samples": str(self._total),
        }
        self.parent_run_id = open_parent_run(self.client, self.experiment_id, parent_tags, self.params)
        self._runs = TrialRuns(
            self.client,
            experiment_id=self.experiment_id,
            parent_run_id=self.parent_run_id,
            study_name=self.study_name,
            study_id=self.study_id,
            defaults=self.defaults,
        )
        self._models = FrontModels(
            self.client,
            experiment_id=self.experiment_id,
            study_id=self.study_id,
            directory=self.study_dir / "front_checkpoints",
            register_model=self.register_model,
        )
        self._load_children()
        parent_run_id, artifacts = self.parent_run_id, MlflowClient(tracking_uri=self.tracking_uri)

        def log_artifacts(paths: list[Path]) -> None:  # in the writer's thread: a client of its own
            for path in paths:
                artifacts.log_artifact(parent_run_id, str(path))

        self._writer = FrontWriter(self.study_dir, self.study_name, written=log_artifacts)

    def on_step_begin(self, iteration: int, trials: list[Trial], **info) -> None:
        if not self._reconciled:
            self._reconcile(trials)

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info) -> None:
        if not self._reconciled:
            self._reconcile(trials)
        run_id = self._runs.run_of(trial)
        if self.client.get_run(run_id).info.status != "RUNNING":  # a trial that continues after a resume
            self.client.update_run(run_id, status="RUNNING")
            delete_tags(self.client, run_id, ("interrupted", "stale"))
        self._log_saved_step(trial, run_id)
        self._started.add(trial.trial_id)
        self._ended.discard(trial.trial_id)

    def on_trial_result(self, iteration: int, trials: list[Trial], trial: Trial, result: dict, **info) -> None:
        run_id = self._runs.run_of(trial)
        self._runs.tag_node(run_id, result)
        self._log_step(trial, run_id, result)

    def _log_step(self, trial: Trial, run_id: str, result: Mapping[str, Any]) -> None:
        step = int(result["step"])
        self._runs.log_step(run_id, step, result)
        self._book.add(run_id, step, self._point(trial, run_id, "RUNNING", step, result))

    def _log_saved_step(self, trial: Trial, run_id: str) -> None:
        """The last step Tune saved for a restored trial, if the MLflow store lacks it: a store restored from a
        snapshot (``study.driver_state``) taken just before the driver was lost can miss the step Tune saved after
        it, and the trial, continuing after that step, never reports it again."""
        step = (trial.last_result or {}).get("step")
        if isinstance(step, (int, float)) and int(step) not in self._runs.logged_steps.get(run_id, set()):
            self._log_step(trial, run_id, trial.last_result)

    def on_checkpoint(self, iteration: int, trials: list[Trial], trial: Trial, checkpoint: Any, **info) -> None:
        """Keep a copy of the step's checkpoint if its point is on the step front or is the trial's last step: Tune
        deletes it when the next step's arrives, and it may be (or become) a front member's model."""
        result = trial.last_result or {}
        if "step" not in result or self._models is None:
            return
        key = (self._runs.run_of(trial), int(result["step"]))
        final = result.get(FINAL_STEP)
        if key in self._book.step_front_points() or (final is not None and key[1] >= int(final)):
            self._models.keep(key, checkpoint.path, checkpoint.filesystem)

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info) -> None:
        self._end(trial, error=False)

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info) -> None:
        self._end(trial, error=True)

    def on_experiment_end(self, trials: list[Trial], **info) -> None:
        if self.parent_run_id is None:
            return
        # Ctrl-C: Tune stops the running trials as TERMINATED without calling on_trial_complete; they (and trials
        # not started yet) continue on --resume.
        unfinished = [
            t for t in trials if t.status in _LIVE or (t.trial_id in self._started and t.trial_id not in self._ended)
        ]
        for trial in unfinished:
            run_id = self._runs.by_trial.get(trial.trial_id)
            if run_id is not None and self.client.get_run(run_id).info.status == "RUNNING":
                set_tags(self.client, run_id, {"interrupted": "the driver stopped; --resume continues this trial"})
                self.client.set_terminated(run_id, "KILLED")
        self._tag_membership()
        if self._writer is not None:  # the final files, written before the parent run ends
            self._writer.close(self._book.snapshot())
            self._writer = None
        if self._models is not None:
            # The models still being logged, then their tags as the fronts stand now.
            errors = self._models.finish()
            if errors:
                set_tags(self.client, self.parent_run_id, {"model_errors": one_line("; ".join(errors))})
                for error in errors:  # the summary below says where the models are: say which are not
                    print(f"warning: {one_line(error)}", file=sys.stderr, flush=True)
        counts = {state: 0 for state in _STATUS.values()}
        for run in self._runs.children():
            counts[run.info.status] = counts.get(run.info.status, 0) + 1
        set_tags(
            self.client,
            self.parent_run_id,
            {
                "trials_finished": str(counts["FINISHED"]),
                "trials_killed": str(counts["KILLED"]),
                "trials_failed": str(counts["FAILED"]),
                "front_size": str(self._book.front_size),
            },
        )
        interrupted = bool(unfinished) or len(trials) < self._total
        if interrupted:
            stopped = "the driver stopped; --resume continues the study"
            set_tags(self.client, self.parent_run_id, {"interrupted": stopped})
        else:
            delete_tags(self.client, self.parent_run_id, ("interrupted",))
        self.client.set_terminated(self.parent_run_id, "KILLED" if interrupted else "FINISHED")

    # --- runs ---------------------------------------------------------------------------------------------------

    def _load_children(self) -> None:
        """Rebuild what this study logged before (a resumed study): runs by trial, steps, points and the front,
        the models of front members, the study metrics' running totals."""
        children = self._runs.children()
        if not children:
            return
        self._models.restore()
        parent = self.client.get_run(self.parent_run_id).data
        self._models.reference = read_reference(parent.tags)
        membership, outcomes = {}, {}
        for run in children:
            if "pareto" in run.data.tags:
                membership[run.info.run_id] = run.data.tags["pareto"] == "true"
            if "outcome" in run.data.tags:
                outcomes[run.info.run_id] = run.data.tags["outcome"]
        self._totals.restore(parent.metrics, outcomes)
        statuses = {run.info.run_id: run.info.status for run in children}
        points = load_points(self.client, self.experiment_id, statuses=None, parent_run_id=self.parent_run_id)
        self._book.restore(points, statuses, membership)
        self._runs.restore(children, zip(points["run_id"], points["step"], strict=True))

    def _reconcile(self, trials: Iterable[Trial]) -> None:
        """Close the runs a stopped driver left RUNNING whose trial will not continue."""
        self._reconciled = True
        by_id = {trial.trial_id: trial for trial in trials}
        for trial_id, run_id in list(self._runs.by_trial.items()):
            trial = by_id.get(trial_id)
            if trial is not None and trial.status in _LIVE:
                continue
            if self.client.get_run(run_id).info.status != "RUNNING":
                continue
            if trial is not None and trial.status in (Trial.TERMINATED, Trial.ERROR):
                self._log_saved_step(trial, run_id)
                self._end(trial, error=trial.status == Trial.ERROR)
            else:
                set_tags(self.client, run_id, {"stale": "left RUNNING by a stopped driver; its trial did not continue"})
                self.client.set_terminated(run_id, "KILLED")

    def _end(self, trial: Trial, *, error: bool) -> None:
        if trial.trial_id in self._ended:
            return
        started = time.perf_counter()
        self._ended.add(trial.trial_id)
        run_id = self._runs.run_of(trial)
        outcome = judge(trial.last_result, self.metrics, error=error)
        tags = {"outcome": outcome.state}
        if outcome.state == PRUNED:
            tags.update(stopped_by=self.scheduler, stopped_at_step=str(outcome.step), stop_reason=outcome.reason or "")
        elif outcome.state == FAILED:
            tags["error"] = error_line(trial) if error else one_line(outcome.reason)
        status = _STATUS[outcome.state]
        final = None
        if outcome.state == COMPLETE:
            final = self._book.points.get((run_id, outcome.step)) or self._point(
                trial, run_id, status, outcome.step, trial.last_result
            )
            violation = self._book.violation(run_id, final)
            if violation:
                tags.update({VIOLATION: violation, "pareto": "false"})
        else:
            tags["pareto"] = "false"
        self._book.end(run_id, status, final)
        set_tags(self.client, run_id, tags)
        self.client.set_terminated(run_id, status)
        first_end = self._totals.ended(run_id, outcome.state, trial.last_result)
        self._tag_membership()
        if self._writer is not None:
            self._writer.request(self._book.snapshot())
        self._update_models()
        if first_end:  # a trial ending again after a resume: the study metrics of its end were logged then
            self._log_study_metrics(time.perf_counter() - started)

    def _tag_membership(self) -> None:
        """The ``pareto`` tag of every run whose membership of the front changed (the book keeps the front)."""
        for run_id, member in self._book.take_changes().items():
            set_tags(self.client, run_id, {"pareto": "true" if member else "false"})

    def _update_models(self) -> None:
        if self._models is None:
            return
        known_reference = self._models.reference
        rows = dict(self._book.points)
        rows.update({(run_id, int(row["step"])): row for run_id, row in self._book.finals.items()})
        self._models.update(self._book.front_points(), self._book.step_front_points(), rows, set(self._totals.outcomes))
        if self._models.reference is not None and known_reference is None:
            set_tags(self.client, self.parent_run_id, reference_tags(self._models.reference))

    def _log_study_metrics(self, seconds: float) -> None:
        """The study-level metrics at step = trials ended (``study.study_metrics``)."""
        models = self._models
        metrics = self._totals.metrics(
            seconds,
            front=self._book.front_rows(),
            finals=self._book.finals.values(),
            reference=None if models is None else models.reference,
            model_seconds=None if models is None else list(models.seconds),
        )
        self.client.log_batch(self.parent_run_id, metrics=metrics)

    def _point(self, trial: Trial, run_id: str, status: str, step: int, result: Mapping[str, Any]) -> dict[str, Any]:
        return point_row(
            run_id=run_id,
            run_name=trial_name(trial),
            trial_id=trial.trial_id,
            status=status,
            step=step,
            settings=self._runs.settings(trial),
            result=result,
        )
