"""Two Ray nodes on this machine: trials land on both, one node dies mid-trial, the study still completes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import optuna

SCRIPT = Path(__file__).with_name("multinode_study.py")


def test_study_survives_a_node_killed_mid_trial(tmp_path: Path, spa_cache_dir: str) -> None:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path), spa_cache_dir],
        capture_output=True,
        text=True,
        env=env,
        timeout=420,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert len(results) == 1, done.stdout[-3000:]
    outcome = json.loads(results[0][len("RESULT ") :])
    assert outcome["exit_code"] == 0 and outcome["killed"] is True

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("multinode")
    runs = client.search_runs([experiment.experiment_id], "tags.study_role = 'trial'")
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 2  # every trial accounted for, no duplicate runs
    assert {r.info.status for r in children} == {"FINISHED"}
    node_lists = {r.data.tags["trial_id"]: r.data.tags["node_ids"].split(",") for r in children}
    seen = {node for nodes in node_lists.values() for node in nodes}
    assert seen == {outcome["head_id"], outcome["worker_id"]}, (node_lists, outcome)  # trials landed on both nodes
    moved = [nodes for nodes in node_lists.values() if nodes == [outcome["worker_id"], outcome["head_id"]]]
    assert len(moved) == 1, (node_lists, outcome)  # the killed node's trial was retried on the other one
    for run in children:
        history = client.get_metric_history(run.info.run_id, "val_accuracy")
        # Resumed from its last checkpoint: every pruning step measured exactly once, none repeated.
        assert sorted(m.step for m in history) == [0, 1, 2, 3]

    storage = tmp_path / "storage" / "multinode"
    study = optuna.load_study(study_name="multinode", storage=f"sqlite:///{storage / 'optuna.db'}")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2
    # Results and checkpoints live in the shared storage path.
    assert len(list(storage.glob("trial-*/checkpoint_*"))) == 2
