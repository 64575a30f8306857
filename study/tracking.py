"""MLflow bookkeeping of a study, as a Tune callback on the driver: the only module that touches MLflow.

One experiment per study (by default), one parent run per study (tag ``study_id``), one child run per trial
(``PARENT_TAG``; tags ``trial_id``, ``trial_number``, ``learner``, ``criterion``, ``node_ip``; params = the
trial's settings; one metric value per pruning step, MLflow step = pruning step). A trial ends FINISHED,
KILLED (stopped early by the scheduler: tag ``stopped_by``) or FAILED (tag ``error``), judged as Optuna is told
(``study.outcome.judge``); a completed trial that breaks the space's constraints is tagged ``constraint_violated``
(the reason) and is on no front. Every time a trial ends the front book (``study.front``) updates the fronts
incrementally and the completed runs whose membership changed are tagged ``pareto=true`` or ``false``; the front
files (in the study directory, logged as artifacts of the parent run) are written by a background thread, at most
every few seconds and always at the study's end (Ctrl-C included), so the event loop never waits for a plot.
Recording results needs neither torch nor ``spa``'s model code: the experiment's default settings come
in as plain data (``defaults``); torch is imported only to rebuild a front member's model.

The experiment is tagged as model training (``study.mlflow_experiment``); only a local store gets a local artifact
location. Front members become logged models (``study.front_models``: the step's checkpoint is copied from the
trial's storage when it arrives, ``on_checkpoint``, and logged when a trial ends). When a trial ends the parent run
gets ``STUDY_METRICS`` at MLflow step = trials ended so far, and ``COMPUTE_METRIC`` at step = their compute seconds.

Resuming: Tune restores this callback from the pickled tuner, so it holds plain settings until ``setup``; there it
finds the parent and child runs of the study in MLflow again (``study.records``), reuses the run of every trial
that continues (and of an Optuna trial asked again after Tune lost it, found by its number), skips steps already
logged, and closes runs left RUNNING by a stopped driver whose trial will not continue.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from ray import cloudpickle
from ray.tune import Callback
from ray.tune.experiment import Trial

from study.constraints import VIOLATION, Constraints
from study.front import FrontBook, FrontWriter
from study.front_measures import Member, Reference, front_hypervolume
from study.front_models import FrontModels
from study.mlflow_experiment import EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND, artifact_location
from study.names import FINAL_STEP, PARENT_TAG, STUDY_KEYS, TRIAL_NUMBER, trial_name
from study.outcome import COMPLETE, FAILED, PRUNED, judge, one_line
from study.records import POINT_METRICS, child_runs, load_points, point_row

__all__ = ["StudyTracker", "STUDY_METRICS", "COMPUTE_METRIC", "REFERENCE_TAG"]

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

_STATUS = {COMPLETE: "FINISHED", PRUNED: "KILLED", FAILED: "FAILED"}
_LIVE = (Trial.PENDING, Trial.RUNNING, Trial.PAUSED)
_BATCH = 100  # MLflow's limit of params per log_batch


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
        self._runs: dict[str, str] = {}  # trial_id -> run_id
        self._runs_by_number: dict[int, str] = {}  # Optuna trial number -> run_id, of the runs found on a resume
        self._logged_steps: dict[str, set[int]] = {}  # run_id -> steps logged
        self._nodes: dict[str, list[str]] = {}  # run_id -> ids of the Ray nodes it ran on
        self._book = FrontBook(self.metrics, self.modes, self.constraints)
        self._writer: FrontWriter | None = None  # started in setup: a thread, never pickled
        self._started: set[str] = set()  # trial_ids started in this session
        self._ended: set[str] = set()  # trial_ids recorded as ended in this session
        self._reconciled = False
        self._total = 0
        self._models: FrontModels | None = None
        self._outcomes: dict[str, str] = {}  # run id -> outcome state, every trial of the study that ended
        self._compute_s = 0.0  # the ended trials' compute seconds (Tune's time_total_s), summed
        self._end_seconds: list[float] = []  # driver wall time of each trial end in this session

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
        self.experiment_id = self._experiment()
        self.parent_run_id = self._parent_run()
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
        run_id = self._run_of(trial)
        if self.client.get_run(run_id).info.status != "RUNNING":  # a trial that continues after a resume
            self.client.update_run(run_id, status="RUNNING")
            self._delete_tags(run_id, ("interrupted", "stale"))
        self._log_saved_step(trial, run_id)
        self._started.add(trial.trial_id)
        self._ended.discard(trial.trial_id)

    def on_trial_result(self, iteration: int, trials: list[Trial], trial: Trial, result: dict, **info) -> None:
        run_id = self._run_of(trial)
        logged = self._logged_steps.setdefault(run_id, set())
        node_id = result.get("node_id")
        if run_id not in self._nodes:  # after a driver restart, continue the list the run already carries
            earlier = self.client.get_run(run_id).data.tags.get("node_ids", "")
            self._nodes[run_id] = [n for n in earlier.split(",") if n]
        nodes = self._nodes[run_id]
        if not logged or (node_id is not None and node_id not in nodes):
            if node_id is not None and node_id not in nodes:
                nodes.append(node_id)
            node = {"node_ip": result.get("node_ip"), "hostname": result.get("hostname"), "node_id": node_id}
            if nodes:
                node["node_ids"] = ",".join(nodes)  # every node this trial ran on, in order (retries move it)
            self._set_tags(run_id, {k: str(v) for k, v in node.items() if v is not None})
        self._log_step(trial, run_id, result)

    def _log_step(self, trial: Trial, run_id: str, result: Mapping[str, Any]) -> None:
        step = int(result["step"])
        logged = self._logged_steps.setdefault(run_id, set())
        if step not in logged:  # a step repeated after a resume was measured the same way: log it once
            timestamp = int(time.time() * 1000)
            metrics = [
                Metric(key, float(result[key]), timestamp, step)
                for key in POINT_METRICS
                if isinstance(result.get(key), (int, float))
            ]
            self.client.log_batch(run_id, metrics=metrics)
            logged.add(step)
        self._book.add(run_id, step, self._point(trial, run_id, "RUNNING", step, result))

    def _log_saved_step(self, trial: Trial, run_id: str) -> None:
        """The last step Tune saved for a restored trial, if the MLflow store lacks it: a store restored from a
        snapshot (``study.driver_state``) taken just before the driver was lost can miss the step Tune saved after
        it, and the trial, continuing after that step, never reports it again."""
        step = (trial.last_result or {}).get("step")
        if isinstance(step, (int, float)) and int(step) not in self._logged_steps.get(run_id, set()):
            self._log_step(trial, run_id, trial.last_result)

    def on_checkpoint(self, iteration: int, trials: list[Trial], trial: Trial, checkpoint: Any, **info) -> None:
        """Keep a copy of the step's checkpoint if its point is on the step front or is the trial's last step: Tune
        deletes it when the next step's arrives, and it may be (or become) a front member's model."""
        result = trial.last_result or {}
        if "step" not in result or self._models is None:
            return
        key = (self._run_of(trial), int(result["step"]))
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
            run_id = self._runs.get(trial.trial_id)
            if run_id is not None and self.client.get_run(run_id).info.status == "RUNNING":
                self._set_tags(run_id, {"interrupted": "the driver stopped; --resume continues this trial"})
                self.client.set_terminated(run_id, "KILLED")
        self._tag_membership()
        if self._writer is not None:  # the final files, written before the parent run ends
            self._writer.close(self._book.snapshot())
            self._writer = None
        if self._models is not None:
            # The models still being logged, then their tags as the fronts stand now.
            errors = self._models.finish()
            if errors:
                self._set_tags(self.parent_run_id, {"model_errors": one_line("; ".join(errors))})
        counts = {state: 0 for state in _STATUS.values()}
        for run in self._child_runs():
            counts[run.info.status] = counts.get(run.info.status, 0) + 1
        self._set_tags(
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
            self._set_tags(self.parent_run_id, {"interrupted": "the driver stopped; --resume continues the study"})
        else:
            self._delete_tags(self.parent_run_id, ("interrupted",))
        self.client.set_terminated(self.parent_run_id, "KILLED" if interrupted else "FINISHED")

    # --- runs ---------------------------------------------------------------------------------------------------

    def _experiment(self) -> str:
        experiment = self.client.get_experiment_by_name(self.experiment_name)
        if experiment is None:
            # A local store writes artifacts beside the study; a server puts them where it was told to.
            location = artifact_location(self.tracking_uri, self.study_dir)
            experiment_id = self.client.create_experiment(self.experiment_name, artifact_location=location)
        else:
            experiment_id = experiment.experiment_id
            if experiment.lifecycle_stage != "active":
                self.client.restore_experiment(experiment_id)
        # MLflow 3's UI opens an experiment without this tag in its GenAI (traces) mode.
        self.client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND)
        return experiment_id

    def _parent_run(self) -> str:
        parents = self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.study_id = '{self.study_id}' and tags.study_role = 'parent'"
        )
        tags = {
            **self.tags,
            "study_name": self.study_name,
            "study_id": self.study_id,
            "study_role": "parent",
            "num_samples": str(self._total),
        }
        if parents:
            run_id = parents[0].info.run_id
            self.client.update_run(run_id, status="RUNNING")
            self._set_tags(run_id, tags)
            return run_id
        run = self.client.create_run(self.experiment_id, tags=tags, run_name=self.study_name)
        self._log_params(run.info.run_id, self.params)
        return run.info.run_id

    def _child_runs(self) -> list[Any]:
        return child_runs(self.client, self.experiment_id, self.parent_run_id)

    def _load_children(self) -> None:
        """Rebuild what this study logged before (a resumed study): runs by trial, steps, points and the front,
        the models of front members, the study metrics' running totals."""
        children = self._child_runs()
        if not children:
            return
        self._models.restore()
        parent = self.client.get_run(self.parent_run_id).data
        self._compute_s = float(parent.metrics.get("compute_s", 0.0))
        if REFERENCE_TAG in parent.tags:
            chance, learned = (float(v) for v in parent.tags[REFERENCE_TAG].split(","))
            self._models.reference = Reference(chance, learned)
        membership = {}
        for run in children:
            trial_id = run.data.tags.get("trial_id")
            if trial_id:
                self._runs[trial_id] = run.info.run_id
            if run.data.tags.get(TRIAL_NUMBER, "").isdigit():
                self._runs_by_number[int(run.data.tags[TRIAL_NUMBER])] = run.info.run_id
            if "pareto" in run.data.tags:
                membership[run.info.run_id] = run.data.tags["pareto"] == "true"
            if "outcome" in run.data.tags:
                self._outcomes[run.info.run_id] = run.data.tags["outcome"]
        statuses = {run.info.run_id: run.info.status for run in children}
        points = load_points(self.client, self.experiment_id, statuses=None, parent_run_id=self.parent_run_id)
        self._book.restore(points, statuses, membership)
        for run_id, step in zip(points["run_id"], points["step"], strict=True):
            self._logged_steps.setdefault(run_id, set()).add(int(step))

    def _reconcile(self, trials: Iterable[Trial]) -> None:
        """Close the runs a stopped driver left RUNNING whose trial will not continue."""
        self._reconciled = True
        by_id = {trial.trial_id: trial for trial in trials}
        for trial_id, run_id in list(self._runs.items()):
            trial = by_id.get(trial_id)
            if trial is not None and trial.status in _LIVE:
                continue
            if self.client.get_run(run_id).info.status != "RUNNING":
                continue
            if trial is not None and trial.status in (Trial.TERMINATED, Trial.ERROR):
                self._log_saved_step(trial, run_id)
                self._end(trial, error=trial.status == Trial.ERROR)
            else:
                self._set_tags(run_id, {"stale": "left RUNNING by a stopped driver; its trial did not continue"})
                self.client.set_terminated(run_id, "KILLED")

    def _run_of(self, trial: Trial) -> str:
        run_id = self._runs.get(trial.trial_id) or self._adopt(trial)
        if run_id is not None:
            return run_id
        config = dict(trial.config)
        tags = {
            PARENT_TAG: self.parent_run_id,
            "trial_id": trial.trial_id,
            "study_name": self.study_name,
            "study_id": self.study_id,
            "study_role": "trial",
            "learner": str(config.get("learner", "")),
            "criterion": str(config.get("criterion", "")),
        }
        if TRIAL_NUMBER in config:
            tags[TRIAL_NUMBER] = str(config[TRIAL_NUMBER])
        run = self.client.create_run(self.experiment_id, tags=tags, run_name=trial_name(trial))
        run_id = run.info.run_id
        self._log_params(run_id, self._settings(trial))
        self._runs[trial.trial_id] = run_id
        return run_id

    def _adopt(self, trial: Trial) -> str | None:
        """The run of an Optuna trial that Tune lost and that runs again under a new Tune trial (``study.searcher``):
        the same Optuna trial keeps its run, now tagged with the new trial id; None for any other trial."""
        run_id = self._runs_by_number.get(trial.config.get(TRIAL_NUMBER))
        if run_id is None:
            return None
        for lost in [trial_id for trial_id, known in self._runs.items() if known == run_id]:
            del self._runs[lost]
        self._runs[trial.trial_id] = run_id
        self._set_tags(run_id, {"trial_id": trial.trial_id})
        return run_id

    def _end(self, trial: Trial, *, error: bool) -> None:
        if trial.trial_id in self._ended:
            return
        started = time.perf_counter()
        self._ended.add(trial.trial_id)
        run_id = self._run_of(trial)
        outcome = judge(trial.last_result, self.metrics, error=error)
        tags = {"outcome": outcome.state}
        if outcome.state == PRUNED:
            tags.update(stopped_by=self.scheduler, stopped_at_step=str(outcome.step), stop_reason=outcome.reason or "")
        elif outcome.state == FAILED:
            tags["error"] = _error_line(trial) if error else one_line(outcome.reason)
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
        self._set_tags(run_id, tags)
        self.client.set_terminated(run_id, status)
        first_end = run_id not in self._outcomes
        self._outcomes[run_id] = outcome.state
        if first_end:
            self._compute_s += float((trial.last_result or {}).get("time_total_s") or 0.0)
        self._tag_membership()
        if self._writer is not None:
            self._writer.request(self._book.snapshot())
        self._update_models()
        if first_end:  # a trial ending again after a resume: the study metrics of its end were logged then
            self._log_study_metrics(time.perf_counter() - started)

    def _tag_membership(self) -> None:
        """The ``pareto`` tag of every run whose membership of the front changed (the book keeps the front)."""
        for run_id, member in self._book.take_changes().items():
            self._set_tags(run_id, {"pareto": "true" if member else "false"})

    def _update_models(self) -> None:
        if self._models is None:
            return
        known_reference = self._models.reference
        rows = dict(self._book.points)
        rows.update({(run_id, int(row["step"])): row for run_id, row in self._book.finals.items()})
        self._models.update(self._book.front_points(), self._book.step_front_points(), rows, set(self._outcomes))
        reference = self._models.reference
        if reference is not None and known_reference is None:
            self._set_tags(
                self.parent_run_id, {REFERENCE_TAG: f"{reference.chance_accuracy},{reference.learned_params}"}
            )

    def _log_study_metrics(self, seconds: float) -> None:
        """The study-level metrics at step = trials ended; constant work per trial end (the front only)."""
        self._end_seconds.append(seconds)
        front = self._book.front_rows()
        reference = None if self._models is None else self._models.reference
        members = [Member(row["run_id"], row["val_accuracy"], row["learned_params"]) for row in front]
        hypervolume = front_hypervolume(members, reference) if reference is not None else (0.0 if not front else None)
        states = list(self._outcomes.values())
        finals = [row.get("val_accuracy") for row in self._book.finals.values()]
        values = {
            "front_size": len(front),
            "hypervolume": hypervolume,
            "best_val_accuracy": max((v for v in finals if v == v), default=None),
            "trials_complete": states.count(COMPLETE),
            "trials_pruned": states.count(PRUNED),
            "trials_failed": states.count(FAILED),
            "compute_s": self._compute_s,
            "driver_trial_end_s": seconds,
            # This driver session's logged models and the wall time they took (rebuild, export, upload).
            "models_logged": None if self._models is None else len(self._models.seconds),
            "model_logging_s": None if self._models is None else sum(list(self._models.seconds)),
        }
        step, timestamp = len(states), int(time.time() * 1000)
        metrics = [Metric(key, float(value), timestamp, step) for key, value in values.items() if value is not None]
        if hypervolume is not None:
            metrics.append(Metric(COMPUTE_METRIC, float(hypervolume), timestamp, int(round(self._compute_s))))
        self.client.log_batch(self.parent_run_id, metrics=metrics)

    def _point(self, trial: Trial, run_id: str, status: str, step: int, result: Mapping[str, Any]) -> dict[str, Any]:
        return point_row(
            run_id=run_id,
            run_name=trial_name(trial),
            trial_id=trial.trial_id,
            status=status,
            step=step,
            settings=self._settings(trial),
            result=result,
        )

    def _settings(self, trial: Trial) -> dict[str, Any]:
        """Every experiment setting of the trial, defaults included (a run's params say how to repeat it)."""
        # Tune hands lists where the experiment's settings hold tuples (densities): record them as the experiment
        # would, so a run's params read the same whether a setting was a default or sampled.
        own = {k: tuple(v) if isinstance(v, list) else v for k, v in trial.config.items() if k not in STUDY_KEYS}
        return {**self.defaults, **own}

    # --- small helpers ------------------------------------------------------------------------------------------

    def _log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        items = [Param(str(k), str(v)) for k, v in params.items()]
        for start in range(0, len(items), _BATCH):
            self.client.log_batch(run_id, params=items[start : start + _BATCH])

    def _set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        if tags:
            self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def _delete_tags(self, run_id: str, keys: Iterable[str]) -> None:
        present = self.client.get_run(run_id).data.tags
        for key in keys:
            if key in present:
                self.client.delete_tag(run_id, key)


def _error_line(trial: Trial) -> str:
    """The trial's exception as one line, e.g. ``NonFiniteLossError: training loss became nan at batch 0; ...``."""
    # Tune has just written the exception beside the trial on the driver (not yet synced to storage): read it there.
    error = None
    path = trial.pickled_error_file
    if path and Path(path).is_file():
        try:
            with open(path, "rb") as file:
                error = cloudpickle.load(file)
        except Exception:  # unreadable (e.g. its class cannot be imported here): fall back on the text
            error = None
    cause = getattr(error, "cause", None) or error
    if cause is not None:
        lines = [line for line in str(cause).splitlines() if line.strip()]
        return one_line(f"{type(cause).__name__}: {lines[0] if lines else ''}")
    path = trial.error_file
    if path and Path(path).is_file():
        lines = [line for line in Path(path).read_text().splitlines() if line.strip()]
        if lines:  # the traceback's last line, "package.module.ErrorType: message"
            kind, _, message = lines[-1].partition(": ")
            return one_line(f"{kind.rsplit('.', 1)[-1]}: {message}" if message else lines[-1])
    return "the trial raised an error"
