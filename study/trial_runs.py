"""The MLflow child runs of a study's trials, kept by the study's callback (``study.tracking``).

One child run per trial (``PARENT_TAG``; tags ``trial_id``, ``trial_number``, ``learner``, ``criterion``, and the
nodes it ran on: ``node_ip``, ``hostname``, ``node_id``, ``node_ids``; params = every experiment setting of the
trial, defaults included, so a run says how to repeat it), one metric value per pruning step, at MLflow step =
pruning step, logged once: the point (``POINT_METRICS``), the step the trial would end at (``FINAL_STEP``: a run whose
last step is below it was stopped early, ``study.report``) and what the step cost (``COST_METRIC_NAMES``: compile
seconds, peak GPU memory), each where the result holds a number. On a resume the runs are found again: by trial
id, and by Optuna trial number for an Optuna trial asked again after Tune lost it (``study.searcher``), which keeps
its run under its new trial id.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from ray.tune.experiment import Trial

from spa.metrics import COST_METRIC_NAMES
from study.mlflow_runs import log_params, set_tags
from study.names import FINAL_STEP, PARENT_TAG, STUDY_KEYS, TRIAL_NUMBER, trial_name
from study.records import POINT_METRICS, child_runs

__all__ = ["STEP_METRICS", "TrialRuns"]

# What a trial's run logs at every pruning step: its point, its last step, then what the step cost (never objectives).
STEP_METRICS = (*POINT_METRICS, FINAL_STEP, *COST_METRIC_NAMES)


class TrialRuns:
    """Trial id -> run id, the steps each run logged, the nodes each ran on; see the module docstring."""

    def __init__(
        self,
        client: MlflowClient,
        *,
        experiment_id: str,
        parent_run_id: str,
        study_name: str,
        study_id: str,
        defaults: Mapping[str, Any],
    ) -> None:
        self.client = client
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.study_name = study_name
        self.study_id = study_id
        self.defaults = dict(defaults)  # the flat settings of the default experiment
        self.by_trial: dict[str, str] = {}  # trial_id -> run_id
        self.by_number: dict[int, str] = {}  # Optuna trial number -> run_id, of the runs found on a resume
        self.logged_steps: dict[str, set[int]] = {}  # run_id -> steps logged
        self._nodes: dict[str, list[str]] = {}  # run_id -> ids of the Ray nodes it ran on

    def children(self) -> list[Any]:
        """The study's child runs in MLflow."""
        return child_runs(self.client, self.experiment_id, self.parent_run_id)

    def restore(self, children: Iterable[Any], steps: Iterable[tuple[str, int]]) -> None:
        """Find the runs of a resumed study again: ``children`` its child runs, ``steps`` the (run id, step) logged."""
        for run in children:
            trial_id = run.data.tags.get("trial_id")
            if trial_id:
                self.by_trial[trial_id] = run.info.run_id
            if run.data.tags.get(TRIAL_NUMBER, "").isdigit():
                self.by_number[int(run.data.tags[TRIAL_NUMBER])] = run.info.run_id
        for run_id, step in steps:
            self.logged_steps.setdefault(run_id, set()).add(int(step))

    def run_of(self, trial: Trial) -> str:
        """The run of ``trial``, created (tags, params) the first time it is asked for."""
        run_id = self.by_trial.get(trial.trial_id) or self._adopt(trial)
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
        log_params(self.client, run_id, self.settings(trial))
        self.by_trial[trial.trial_id] = run_id
        return run_id

    def _adopt(self, trial: Trial) -> str | None:
        """The run of an Optuna trial that Tune lost and that runs again under a new Tune trial (``study.searcher``):
        the same Optuna trial keeps its run, now tagged with the new trial id; None for any other trial."""
        run_id = self.by_number.get(trial.config.get(TRIAL_NUMBER))
        if run_id is None:
            return None
        for lost in [trial_id for trial_id, known in self.by_trial.items() if known == run_id]:
            del self.by_trial[lost]
        self.by_trial[trial.trial_id] = run_id
        set_tags(self.client, run_id, {"trial_id": trial.trial_id})
        return run_id

    def settings(self, trial: Trial) -> dict[str, Any]:
        """Every experiment setting of the trial, defaults included (a run's params say how to repeat it)."""
        # Tune hands lists where the experiment's settings hold tuples (densities): record them as the experiment
        # would, so a run's params read the same whether a setting was a default or sampled.
        own = {k: tuple(v) if isinstance(v, list) else v for k, v in trial.config.items() if k not in STUDY_KEYS}
        return {**self.defaults, **own}

    def tag_node(self, run_id: str, result: Mapping[str, Any]) -> None:
        """Tag the run with the node of ``result`` at its first result, and whenever the trial moves to a new node."""
        node_id = result.get("node_id")
        if run_id not in self._nodes:  # after a driver restart, continue the list the run already carries
            earlier = self.client.get_run(run_id).data.tags.get("node_ids", "")
            self._nodes[run_id] = [n for n in earlier.split(",") if n]
        nodes = self._nodes[run_id]
        if not self.logged_steps.get(run_id) or (node_id is not None and node_id not in nodes):
            if node_id is not None and node_id not in nodes:
                nodes.append(node_id)
            node = {"node_ip": result.get("node_ip"), "hostname": result.get("hostname"), "node_id": node_id}
            if nodes:
                node["node_ids"] = ",".join(nodes)  # every node this trial ran on, in order (retries move it)
            set_tags(self.client, run_id, {k: str(v) for k, v in node.items() if v is not None})

    def log_step(self, run_id: str, step: int, result: Mapping[str, Any]) -> None:
        """The step's metrics, once: a step repeated after a resume was measured the same way."""
        logged = self.logged_steps.setdefault(run_id, set())
        if step not in logged:
            timestamp = int(time.time() * 1000)
            metrics = [
                Metric(key, float(result[key]), timestamp, step)
                for key in STEP_METRICS
                if isinstance(result.get(key), (int, float))
            ]
            self.client.log_batch(run_id, metrics=metrics)
            logged.add(step)
