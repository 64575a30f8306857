"""study.tracking against a real MLflow store, driven by hand-made trials (no Ray trials run): early stops, errors,
NaN objectives, and a driver that stops and comes back."""

from __future__ import annotations

import math
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from ray import cloudpickle
from ray.exceptions import RayTaskError

from spa.experiment import NonFiniteLossError
from study.front_files import FRONT_FILES
from study.names import FINAL_STEP, TRIAL_NUMBER
from study.tracking import StudyTracker

PARENT = "mlflow.parentRunId"


@dataclass
class FakeTrial:
    trial_id: str
    number: int
    status: str = "RUNNING"
    last_result: dict = field(default_factory=dict)
    pickled_error_file: str | None = None
    error_file: str | None = None

    @property
    def config(self) -> dict:
        return {"learner": "splora", "criterion": "lrp", "rank": 4 + self.number, "lr": 0.01, TRIAL_NUMBER: self.number}


def step_result(step: int, final: int, accuracy: float, learned: float) -> dict:
    return {
        "step": step,
        FINAL_STEP: final,
        "density": 1.0 - 0.2 * step,
        "val_accuracy": accuracy,
        "test_accuracy": accuracy,
        "learned_params": learned,
        "params": 10 * learned,
        "flops": 100.0,
        "epoch": step + 1,
        "train_loss": 0.5,
        "val_accuracy_pruned": math.nan,
        "node_ip": "10.0.0.7",
        "hostname": "worker-7",
    }


def make_tracker(tmp_path: Path, scheduler: str = "asha") -> StudyTracker:
    return StudyTracker(
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        experiment_name="unit",
        study_name="unit",
        study_id="study-1",
        study_dir=tmp_path / "study",
        metrics=["val_accuracy", "learned_params"],
        modes=["max", "min"],
        scheduler=scheduler,
        params={"space": "splora_lrp", "num_samples": 4},
        tags={"space": "splora_lrp"},
    )


def first_session(tmp_path: Path, *trials: FakeTrial) -> StudyTracker:
    """A driver's first session: a fifo tracker set up in a new study directory, with ``trials`` started."""
    (tmp_path / "study").mkdir()
    tracker = make_tracker(tmp_path, scheduler="fifo")
    tracker.setup(total_num_samples=len(trials))
    for trial in trials:
        tracker.on_trial_start(0, [trial], trial)
    return tracker


def report(tracker: StudyTracker, trial: FakeTrial, *results: dict) -> None:
    for result in results:
        tracker.on_trial_result(0, [trial], trial, dict(result))
        trial.last_result = dict(result)


def runs(tmp_path: Path) -> tuple[MlflowClient, list, dict]:
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("unit")
    found = list(client.search_runs([experiment.experiment_id]))
    children = {run.info.run_name: run for run in found if PARENT in run.data.tags}
    return client, [run for run in found if PARENT not in run.data.tags], children


@pytest.fixture(scope="module")
def ended_study(tmp_path_factory) -> Path:
    """Four trials: complete on the front, stopped by ASHA, raised NonFiniteLossError, NaN final objective."""
    tmp_path = tmp_path_factory.mktemp("ended")
    (tmp_path / "study").mkdir()
    tracker = make_tracker(tmp_path)
    tracker.setup(total_num_samples=4)
    good, stopped, raised, nan = (FakeTrial(f"t{n}", n) for n in range(4))
    for trial in (good, stopped, raised, nan):
        tracker.on_step_begin(0, [good, stopped, raised, nan])
        tracker.on_trial_start(0, [trial], trial)
    # What the steps cost: a compiled GPU trial reports both, the others (results without them) neither.
    report(
        tracker,
        good,
        {**step_result(0, 1, 0.9, 900.0), "compile_s": 12.5, "peak_gpu_mib": 420.25},
        {**step_result(1, 1, 0.8, 300.0), "compile_s": 0.0, "peak_gpu_mib": 431.5},
    )
    report(tracker, stopped, step_result(0, 2, 0.5, 900.0), step_result(1, 2, 0.1, 300.0))
    tracker.on_trial_complete(0, [], stopped)
    tracker.on_trial_complete(0, [], good)
    report(tracker, raised, step_result(0, 1, 0.9, 800.0))
    error = RayTaskError(
        "run_trial", "Traceback ...", NonFiniteLossError("training loss became nan at batch 2; lower it")
    )
    raised.pickled_error_file = str(tmp_path / "error.pkl")
    with open(raised.pickled_error_file, "wb") as file:
        cloudpickle.dump(error, file)
    tracker.on_trial_error(0, [], raised)
    report(tracker, nan, step_result(0, 1, 0.9, 900.0), step_result(1, 1, math.nan, 100.0))
    tracker.on_trial_complete(0, [], nan)
    for trial in (good, stopped, nan):
        trial.status = "TERMINATED"
    raised.status = "ERROR"
    tracker.on_experiment_end([good, stopped, raised, nan])
    return tmp_path


def test_each_ending_is_recorded_with_its_status_and_tags(ended_study) -> None:
    client, parents, children = runs(ended_study)
    (parent,) = parents
    good, stopped, raised, nan = (children[f"trial-00{n}"] for n in range(4))
    assert (good.info.status, good.data.tags["pareto"]) == ("FINISHED", "true")
    assert stopped.info.status == "KILLED" and stopped.data.tags["stopped_by"] == "asha"
    assert stopped.data.tags["stopped_at_step"] == "1" and stopped.data.tags["pareto"] == "false"
    assert raised.info.status == "FAILED" and raised.data.tags["pareto"] == "false"
    assert raised.data.tags["error"] == "NonFiniteLossError: training loss became nan at batch 2; lower it"
    assert nan.info.status == "FAILED" and "val_accuracy is nan" in nan.data.tags["error"]
    for run in children.values():
        assert run.data.tags[PARENT] == parent.info.run_id
        assert (run.data.tags["node_ip"], run.data.tags["hostname"]) == ("10.0.0.7", "worker-7")
        assert run.data.params["rank"] == str(4 + int(run.data.tags["trial_number"]))
        assert TRIAL_NUMBER not in run.data.params
    assert [(m.step, m.value) for m in client.get_metric_history(good.info.run_id, "learned_params")] == [
        (0, 900.0),
        (1, 300.0),
    ]
    assert parent.info.status == "FINISHED" and parent.data.params["space"] == "splora_lrp"
    assert (
        parent.data.tags["trials_finished"],
        parent.data.tags["trials_killed"],
        parent.data.tags["trials_failed"],
    ) == (
        "1",
        "1",
        "2",
    )
    assert set(FRONT_FILES) <= {f.path for f in client.list_artifacts(parent.info.run_id)}


def test_what_each_step_cost_is_logged_where_the_trial_reported_it(ended_study) -> None:
    client, _, children = runs(ended_study)

    def history(run, key: str) -> list[tuple[int, float]]:
        return [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]

    good, stopped = children["trial-000"], children["trial-001"]
    assert history(good, "compile_s") == [(0, 12.5), (1, 0.0)]
    assert history(good, "peak_gpu_mib") == [(0, 420.25), (1, 431.5)]
    assert history(stopped, "compile_s") == history(stopped, "peak_gpu_mib") == []
    assert history(stopped, "final_step") == [(0, 2.0), (1, 2.0)]  # it reached step 1 of 2: stopped early
    assert set(stopped.data.metrics) == set(good.data.metrics) - {"compile_s", "peak_gpu_mib"}


def test_the_step_front_counts_every_measured_step_the_trial_front_only_complete_ones(ended_study) -> None:
    front = pd.read_csv(ended_study / "study" / "pareto_front.csv")
    assert list(front["run_name"]) == ["trial-000"]
    assert list(front["final_step"]) == [1]  # logged with every step: a run stopped before it is told apart
    steps = pd.read_csv(ended_study / "study" / "pareto_front_steps.csv")
    # Measured: trial-000 (0.9, 900) (0.8, 300); trial-001, stopped, (0.5, 900) (0.1, 300); trial-002, which raised
    # later, (0.9, 800); trial-003 (0.9, 900) (NaN, 100). (0.9, 800) beats both (0.9, 900); NaN never enters.
    assert set(zip(steps["run_name"], steps["step"], strict=True)) == {("trial-000", 1), ("trial-002", 0)}
    assert steps["run_id"].notna().all()


def test_a_returning_driver_reuses_runs_closes_stale_ones_and_logs_no_step_twice(tmp_path) -> None:
    done, continues, lost = FakeTrial("t0", 0), FakeTrial("t1", 1), FakeTrial("t2", 2)
    first = first_session(tmp_path, done, continues, lost)
    report(first, done, step_result(0, 1, 0.9, 900.0), step_result(1, 1, 0.8, 300.0))
    first.on_trial_complete(0, [], done)
    report(first, continues, step_result(0, 1, 0.7, 900.0))
    # The driver is killed here: no on_experiment_end; t1 and t2 stay RUNNING in MLflow.

    second = pickle.loads(pickle.dumps(first))  # Tune restores callbacks from the pickled tuner
    assert second.parent_run_id is None
    second.setup(total_num_samples=2)  # (Tune would add a trial for the lost one; this study asks no more)
    done.status = "TERMINATED"
    continues.status = "PENDING"  # t2 was asked after the last saved state: Tune does not know it
    second.on_step_begin(0, [done, continues])
    second.on_trial_start(0, [done, continues], continues)
    report(second, continues, step_result(0, 1, 0.7, 900.0), step_result(1, 1, 0.85, 250.0))  # step 0 again
    second.on_trial_complete(0, [], continues)
    done.status = continues.status = "TERMINATED"
    second.on_experiment_end([done, continues])

    client, parents, children = runs(tmp_path)
    assert len(parents) == 1 and sorted(children) == ["trial-000", "trial-001", "trial-002"]
    assert children["trial-001"].info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(children["trial-001"].info.run_id, "val_accuracy")] == [0, 1]
    assert children["trial-002"].info.status == "KILLED" and "stale" in children["trial-002"].data.tags
    assert children["trial-000"].info.status == "FINISHED"
    # the front of the second session knows the first session's trial: (0.8, 300) vs (0.85, 250)
    assert children["trial-000"].data.tags["pareto"] == "false" and children["trial-001"].data.tags["pareto"] == "true"
    assert parents[0].info.status == "FINISHED"


def test_a_trial_tune_lost_keeps_its_run_when_asked_again_and_a_trial_ending_twice_counts_once(tmp_path) -> None:
    """Head loss with the MLflow store (from a snapshot) ahead of Tune's saved state: Tune lost trial-001 (Optuna asks
    it again under a new Tune trial, study.searcher) and did not save trial-000's end (it ends again)."""
    done, lost = FakeTrial("t0", 0), FakeTrial("t1", 1)
    first = first_session(tmp_path, done, lost)
    report(first, done, step_result(0, 1, 0.9, 900.0), step_result(1, 1, 0.8, 300.0))
    first.on_trial_complete(0, [], done)
    report(first, lost, step_result(0, 1, 0.7, 900.0))

    second = pickle.loads(pickle.dumps(first))
    second.setup(total_num_samples=2)
    done.status = "PENDING"  # Tune's saved state: trial-000 at its last step, not ended; no trial-001
    second.on_step_begin(0, [done])
    second.on_trial_start(0, [done], done)
    report(second, done, step_result(1, 1, 0.8, 300.0))  # says its final step again, from its checkpoint
    second.on_trial_complete(0, [], done)
    again = FakeTrial("t9", 1)  # Optuna trial 1 again, from the start
    second.on_trial_start(0, [done, again], again)
    report(second, again, step_result(0, 1, 0.7, 900.0), step_result(1, 1, 0.75, 250.0))
    second.on_trial_complete(0, [], again)
    done.status = again.status = "TERMINATED"
    second.on_experiment_end([done, again])

    client, parents, children = runs(tmp_path)
    experiment_id = client.get_experiment_by_name("unit").experiment_id
    assert len(client.search_runs([experiment_id])) == 3  # the parent and one run per trial
    assert sorted(children) == ["trial-000", "trial-001"]
    run = children["trial-001"]
    assert run.info.status == "FINISHED" and run.data.tags["trial_id"] == "t9" and "stale" not in run.data.tags
    for name in ("trial-000", "trial-001"):
        assert [m.step for m in client.get_metric_history(children[name].info.run_id, "val_accuracy")] == [0, 1]
    assert run.data.metrics["val_accuracy"] == 0.75
    assert parents[0].data.tags["trials_finished"] == "2" and parents[0].info.status == "FINISHED"
    # One point of the study metrics per trial end, as without the head loss.
    assert [m.step for m in client.get_metric_history(parents[0].info.run_id, "trials_complete")] == [1, 2]


def test_a_store_restored_from_an_older_snapshot_gets_the_steps_tune_saved_since(tmp_path) -> None:
    """Head loss: the MLflow store comes back from a snapshot taken before the last steps Tune saved; a trial that
    continues after such a step (or has ended) never reports it again, so the tracker logs it from Tune's record."""
    from study.sqlite_files import sqlite_backup

    continues, ended = FakeTrial("t0", 0), FakeTrial("t1", 1)
    first = first_session(tmp_path, continues, ended)
    report(first, continues, step_result(0, 2, 0.7, 900.0))
    report(first, ended, step_result(0, 1, 0.6, 900.0))
    sqlite_backup(tmp_path / "mlflow.db", tmp_path / "snapshot.db")  # the last snapshot before the head was lost
    report(first, continues, step_result(1, 2, 0.75, 600.0))
    report(first, ended, step_result(1, 1, 0.65, 300.0))
    first.on_trial_complete(0, [], ended)
    # The new head: the store restored from the snapshot (at another path here: this process's MLflow keeps the first
    # store's connections open).
    second = pickle.loads(pickle.dumps(first))
    second.tracking_uri = f"sqlite:///{tmp_path / 'snapshot.db'}"
    second.setup(total_num_samples=2)
    continues.status, ended.status = "PENDING", "TERMINATED"  # Tune's saved state: t0 at step 1, t1 ended
    second.on_step_begin(0, [continues, ended])
    second.on_trial_start(0, [continues, ended], continues)
    report(second, continues, step_result(2, 2, 0.8, 300.0))  # continues after its step-1 checkpoint
    second.on_trial_complete(0, [], continues)
    continues.status = "TERMINATED"
    second.on_experiment_end([continues, ended])

    client = MlflowClient(tracking_uri=second.tracking_uri)
    found = client.search_runs([client.get_experiment_by_name("unit").experiment_id])
    children = {run.info.run_name: run for run in found if PARENT in run.data.tags}
    parents = [run for run in found if PARENT not in run.data.tags]
    for name, steps in (("trial-000", [0, 1, 2]), ("trial-001", [0, 1])):
        run = children[name]
        assert run.info.status == "FINISHED", name
        for key in ("val_accuracy", "learned_params"):
            assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == steps, (name, key)
    assert children["trial-001"].data.metrics["val_accuracy"] == 0.65
    assert parents[0].info.status == "FINISHED"


def test_a_trial_below_the_floor_is_tagged_and_on_no_front(tmp_path) -> None:
    from study.constraints import VIOLATION, Constraints

    tracker = make_tracker(tmp_path, scheduler="fifo")
    tracker.constraints = Constraints(min_val_accuracy=0.6)
    tracker._reset()  # the book takes the constraints (as after unpickling)
    tracker.setup(total_num_samples=2)
    keeps, breaks = FakeTrial("k", 0), FakeTrial("b", 1)
    for trial in (keeps, breaks):
        tracker.on_trial_start(0, [keeps, breaks], trial)
    report(tracker, keeps, step_result(0, 1, 0.9, 900.0), step_result(1, 1, 0.7, 500.0))
    report(tracker, breaks, step_result(0, 1, 0.8, 900.0), step_result(1, 1, 0.55, 100.0))  # fewer params, too weak
    for trial in (keeps, breaks):
        trial.status = "TERMINATED"
        tracker.on_trial_complete(0, [], trial)
    tracker.on_experiment_end([keeps, breaks])
    _, _, children = runs(tmp_path)
    assert children["trial-001"].info.status == "FINISHED"
    assert children["trial-001"].data.tags[VIOLATION] == "val_accuracy 0.55 < min_val_accuracy 0.6"
    assert children["trial-001"].data.tags["pareto"] == "false" and children["trial-000"].data.tags["pareto"] == "true"
    assert VIOLATION not in children["trial-000"].data.tags
    assert list(pd.read_csv(tmp_path / "study" / "pareto_front.csv")["run_name"]) == ["trial-000"]
    steps = pd.read_csv(tmp_path / "study" / "pareto_front_steps.csv")
    assert not ((steps["run_name"] == "trial-001") & (steps["step"] == 1)).any()  # its (0.55, 100) would be on it
