"""The head node is lost mid-study: the driver is killed and its disk (study directory, Optuna db, MLflow SQLite
store) is gone; ``--resume`` elsewhere restores the driver's state from the snapshot beside the trials
(``--storage-path file://...``, a URI as ``s3://`` is on a cluster) and the study ends as an uninterrupted one would.

The worst case, made certain: Tune's experiment state at the storage path lags the snapshot (``lagging_tune``: its
uploads stop once it holds the second trial), so the resume finds an Optuna trial, its MLflow run and a step that Tune
never stored, and a finished trial that Tune's state has not ended (or has).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
from mlflow.tracking import MlflowClient

optuna.logging.set_verbosity(optuna.logging.WARNING)
NAME = "headloss"
NUM_SAMPLES = 3
PARENT = "mlflow.parentRunId"


def driver(args: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.study.lagging_tune", *args],
        cwd=cwd,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(Path(__file__).parents[2])},
    )


def steps_of(result_json: Path) -> list[int]:
    return [json.loads(line)["step"] for line in result_json.read_text().splitlines() if line.strip()]


def latest_reasons(bucket: Path) -> list[str]:
    latest = bucket / NAME / "driver_state" / "latest.json"
    try:
        return json.loads(latest.read_text())["reasons"]
    except (OSError, ValueError, KeyError):
        return []


def test_head_loss_then_resume_elsewhere_restores_and_completes(tmp_path, backbone_cache, ray_cluster) -> None:
    began = time.perf_counter()
    # The head's cache: the pretrained backbone (trained once per test session) and, under studies/, the driver's state.
    cache = tmp_path / "cache"
    shutil.copytree(backbone_cache, cache, ignore=shutil.ignore_patterns("studies"))
    head, elsewhere, bucket = tmp_path / "head", tmp_path / "new-head", tmp_path / "bucket"
    head.mkdir()
    elsewhere.mkdir()
    address = ray_cluster.get_runtime_context().gcs_address
    argv = [
        "--space", "splora_weight", "--smoke", "--num-samples", str(NUM_SAMPLES), "--max-concurrent", "1",
        "--sampler", "random", "--name", NAME, "--storage-path", f"file://{bucket}", "--cache-dir", str(cache),
        "--tracking-uri", "sqlite:///mlflow.db", "--address", address,
    ]  # fmt: skip
    study_dir = cache / "studies" / NAME
    mlflow_db = head / "mlflow.db"

    # 1. The driver runs until a snapshot holding the second trial's first step is beside the trials (Tune's stored
    # state has the first trial only); then the head dies.
    first = driver(argv, head, tmp_path / "first.log")
    try:
        deadline = time.monotonic() + 300
        # Killed after the first trial ended and the second reported a step: one trial done, one to continue.
        while "trial-001 reported step 0" not in latest_reasons(bucket):  # lagging_tune.HANG_AFTER: then it hangs
            assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no snapshot after the second trial's first step"
            time.sleep(0.1)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
    killed_at = time.perf_counter() - began
    assert (study_dir / "optuna.db").is_file() and mlflow_db.is_file()
    shutil.rmtree(study_dir)
    mlflow_db.unlink()

    # 2. --resume from another working directory, with none of the driver's local state.
    resumed = subprocess.run(
        [sys.executable, "-m", "study.tune", "--name", NAME, "--storage-path", f"file://{bucket}",
         "--cache-dir", str(cache), "--address", address, "--resume"],
        cwd=elsewhere, capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(Path(__file__).parents[2])},
    )  # fmt: skip
    assert resumed.returncode == 0, (resumed.stdout[-3000:], resumed.stderr[-3000:])
    assert f"restored from file://{bucket}/{NAME}/driver_state" in resumed.stdout
    lost = "after Tune's last saved state (the driver stopped): [1] asked again"
    assert lost in resumed.stderr, resumed.stderr[-3000:]
    assert not (elsewhere / "mlflow.db").exists(), "the study's MLflow store is the one restored in place"

    # 3. As an uninterrupted study ends: every trial complete, once, in Optuna and MLflow; every step logged once.
    study = optuna.load_study(study_name=NAME, storage=f"sqlite:///{study_dir / 'optuna.db'}")
    trials = study.get_trials(deepcopy=False)
    assert [(t.number, t.state.name) for t in trials] == [(n, "COMPLETE") for n in range(NUM_SAMPLES)]
    client = MlflowClient(tracking_uri=f"sqlite:///{mlflow_db}")
    experiment = client.get_experiment_by_name(NAME)
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    (parent,) = [run for run in runs if PARENT not in run.data.tags]
    children = sorted((run for run in runs if PARENT in run.data.tags), key=lambda run: run.info.run_name)
    assert parent.info.status == "FINISHED" and "interrupted" not in parent.data.tags
    assert parent.data.tags["trials_finished"] == str(NUM_SAMPLES)
    assert [run.info.run_name for run in children] == [f"trial-{n:03d}" for n in range(NUM_SAMPLES)]
    assert len({run.data.tags["trial_id"] for run in children}) == NUM_SAMPLES
    for run, trial in zip(children, trials, strict=True):
        assert run.info.status == "FINISHED", run.info.run_name
        assert int(run.data.tags["trial_number"]) == trial.number
        assert trial.user_attrs["tune_trial_id"] == run.data.tags["trial_id"]
        for key in ("val_accuracy", "learned_params", "density"):
            steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            assert sorted(steps) == [0, 1], (run.info.run_name, key, steps)  # --smoke: steps 0 and 1, once each
        assert [run.data.metrics["val_accuracy"], run.data.metrics["learned_params"]] == trial.values
    # Tune's own record: the first trial was not trained again. Tune's stored state had not ended it, so it continued
    # from its final checkpoint and said its final step once more (the step the driver had already recorded).
    (result,) = (bucket / NAME).glob("trial-000_*/result.json")
    assert steps_of(result) in ([0, 1], [0, 1, 1]), steps_of(result)
    # The second trial, lost by Tune, ran again from the start under a new Tune trial; the lost one's directory stays.
    runs_of_second = (bucket / NAME).glob("trial-001_*/result.json")
    second = {path.parent.name.split("_", 1)[1]: steps_of(path) for path in runs_of_second}
    assert sorted(second.values()) == [[0], [0, 1]] and second[trials[1].user_attrs["tune_trial_id"]] == [0, 1]
    print(f"head-loss study: killed at {killed_at:.0f}s, done at {time.perf_counter() - began:.0f}s")
