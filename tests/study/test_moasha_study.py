"""``python -m study.tune --scheduler moasha`` end to end, with the real experiment: a trial MOASHA stops is PRUNED
in Optuna (with what it had reached as user attributes), KILLED in MLflow (``stopped_by=moasha``), never on a front,
and the rung records are in the study directory's journal."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from study.schedulers import MOASHA_JOURNAL
from study.tune import main

optuna.logging.set_verbosity(optuna.logging.WARNING)

# Two trials, one after the other; with the random sampler and seed 41 the first draws (rank 2, lr 0.05) and the
# second (rank 32, lr 0.0001): more parameters and, at a learning rate that barely learns, less accuracy. So at the
# first rung (step 0, trained and unpruned) the second trial's accuracy, at the learned parameters it would end with,
# is already beaten by the first trial's final point, and MOASHA stops it before its first pruning step.
SPACE = """
description = "moasha smoke: two pruning steps; rank and learning rate at two extremes each"
[fixed]
learner = "splora"
criterion = "weight"
epochs = 1
recovery_epochs = 1
steps = 2
max_score_batches = 2
batch_size = 64
adapter_lr_ratio = 1.0  # one learning rate for everything: the extremes below mean what they say
recovery_adapter_lr_ratio = 1.0
[params.rank]
type = "categorical"
choices = [2, 32]
[params.lr]
type = "categorical"
choices = [0.05, 0.0001]
"""


def test_moasha_smoke_study_stops_a_trial(tmp_path: Path, backbone_cache, ray_cluster) -> None:
    space = tmp_path / "moasha.toml"
    space.write_text(SPACE)
    args = [
        "--space", str(space), "--scheduler", "moasha", "--sampler", "random", "--seed", "41",
        "--num-samples", "2", "--max-concurrent", "1",
        "--storage-path", str(tmp_path / "runs"), "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
        "--cache-dir", backbone_cache,
    ]  # fmt: skip
    assert main(args) == 0
    study_dir = tmp_path / "runs" / "moasha"

    storage = f"sqlite:///{study_dir / 'optuna.db'}"
    trials = optuna.load_study(study_name="moasha", storage=storage).get_trials(deepcopy=False)
    assert [(t.params["rank"], t.params["lr"]) for t in trials] == [(2, 0.05), (32, 0.0001)], "seed draws changed"
    pruned = [t for t in trials if t.state == optuna.trial.TrialState.PRUNED]
    assert [t.number for t in pruned] == [1], f"MOASHA stopped: {[(t.params, t.state.name) for t in trials]}"
    for trial in pruned:
        assert trial.values is None and trial.user_attrs["last_step"] == 0
        assert {"last_val_accuracy", "last_learned_params"} <= set(trial.user_attrs)

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("moasha")
    runs = {r.data.tags.get("trial_number"): r for r in client.search_runs([experiment.experiment_id])}
    parent = runs.pop(None)
    assert parent.data.params["scheduler"] == "moasha" and parent.data.params["sampler"] == "random"
    for trial in pruned:
        run = runs[str(trial.number)]
        assert run.info.status == "KILLED" and run.data.tags["stopped_by"] == "moasha"
        assert run.data.tags["pareto"] == "false"
    front = pd.read_csv(study_dir / "pareto_front.csv")
    assert not set(front["trial_id"]) & {t.user_attrs["tune_trial_id"] for t in pruned}

    records = [json.loads(line) for line in (study_dir / MOASHA_JOURNAL).read_text().splitlines()]
    rungs, finals = [r for r in records if "rung" in r], [r for r in records if r.get("final")]
    assert {r["trial_id"] for r in rungs if not r["continued"]} == {t.user_attrs["tune_trial_id"] for t in pruned}
    assert [r["trial_id"] for r in finals] == [trials[0].user_attrs["tune_trial_id"]]  # what the stop was judged on
    # ... on learned params projected to the schedule's end: the default final density, 0.3, of its step-0 count
    (stopped,) = pruned
    step0 = client.get_metric_history(runs[str(stopped.number)].info.run_id, "learned_params")
    judged = [r["losses"][1] for r in rungs if r["trial_id"] == stopped.user_attrs["tune_trial_id"]]
    assert [point.step for point in step0] == [0] and judged == [pytest.approx(step0[0].value * 0.3)]
