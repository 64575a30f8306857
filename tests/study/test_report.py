"""study.report against a real sqlite MLflow store: a parent run, three finished trials, one failed, one stray run."""

from __future__ import annotations

import csv
import math
import statistics
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from study.records import POINT_COLUMNS, load_points
from study.report import build_parser, final_points, main, table1

EXPERIMENT = "digits-study"

# Three trials, pruning steps 0..2: (density, val_accuracy, test_accuracy, learned_params, flops) per step.
TRIALS = {
    "trial_a": {
        "params": {"learner": "splora", "criterion": "weight", "rank": "8", "lr": "0.01"},
        "steps": [(1.0, 0.90, 0.91, 1000, 5e6), (0.5, 0.85, 0.86, 600, 3e6), (0.3, 0.80, 0.81, 400, 2e6)],
    },
    "trial_b": {
        "params": {"learner": "splora", "criterion": "weight", "rank": "8", "lr": "0.02"},
        "steps": [(1.0, 0.92, 0.93, 1000, 5e6), (0.501, 0.83, 0.84, 620, 3.2e6), (0.298, 0.78, 0.79, 380, 1.8e6)],
    },
    "trial_c": {  # fine-pruning logs no rank
        "params": {"learner": "finetune", "criterion": "lrp", "lr": "0.001"},
        "steps": [(1.0, 0.94, 0.95, 10000, 5e6), (0.5, 0.89, 0.90, 5000, 2.5e6), (0.3, 0.69, 0.70, 3000, 1.5e6)],
    },
    "trial_d": {  # stopped early by a scheduler after step 1 of 3: its steps count, but it has no final values
        "params": {"learner": "splora", "criterion": "grad", "rank": "32", "lr": "0.01"},
        "steps": [(1.0, 0.50, 0.60, 5000, 5e6), (0.7, 0.40, 0.50, 4000, 4e6)],
        "final_step": 3,
    },
}


def _metrics(steps: list[tuple], *, step_offset: int = 0, step_metric: bool = False) -> list[Metric]:
    metrics = []
    for step, (density, val, test, learned, flops) in enumerate(steps):
        values = {"density": density, "val_accuracy": val, "test_accuracy": test, "learned_params": learned}
        values |= {"flops": flops, "params": learned * 2}
        if step_metric:
            values["step"] = step
        time = 1_000 + step
        metrics += [Metric(k, float(v), time, step + step_offset) for k, v in values.items()]
    return metrics


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment(EXPERIMENT)
    client.create_experiment("another-study")
    parent = client.create_run(experiment, run_name="study").info.run_id
    for index, (name, trial) in enumerate(TRIALS.items()):
        run = client.create_run(experiment, run_name=name, tags={"mlflow.parentRunId": parent, "trial_id": f"t{index}"})
        # trial_b is logged the way Ray's logger does: MLflow step = training iteration, the pruning step a metric.
        metrics = (
            _metrics(trial["steps"], step_offset=1, step_metric=True) if name == "trial_b" else _metrics(trial["steps"])
        )
        if name == "trial_a":  # a resumed trial reports step 2 twice: the later value counts
            metrics.append(Metric("test_accuracy", 0.0, 500, 2))
        if "final_step" in trial:
            metrics += [Metric("final_step", trial["final_step"], 1_000, step) for step in range(len(trial["steps"]))]
        params = [Param(k, v) for k, v in trial["params"].items()]
        client.log_batch(run.info.run_id, metrics=metrics, params=params)
        client.set_terminated(run.info.run_id, "FINISHED")
    failed = client.create_run(experiment, run_name="trial_failed", tags={"mlflow.parentRunId": parent})
    client.log_batch(
        failed.info.run_id, metrics=_metrics(TRIALS["trial_a"]["steps"]), params=[Param("learner", "splora")]
    )
    client.set_terminated(failed.info.run_id, "FAILED")
    stray = client.create_run(experiment, run_name="not_a_trial", tags=[])
    client.log_batch(stray.info.run_id, metrics=_metrics(TRIALS["trial_c"]["steps"]), tags=[RunTag("x", "y")])
    client.set_terminated(stray.info.run_id, "FINISHED")
    client.set_terminated(parent, "FINISHED")
    return uri


@pytest.fixture(scope="module")
def points(store: str) -> pd.DataFrame:
    client = MlflowClient(tracking_uri=store)
    return load_points(client, client.get_experiment_by_name(EXPERIMENT).experiment_id)


def test_load_points_one_row_per_finished_trial_and_step(points: pd.DataFrame) -> None:
    assert points.columns.tolist()[: len(POINT_COLUMNS)] == list(POINT_COLUMNS)
    assert [c for c in points.columns if c.startswith("config/")] == [
        "config/criterion",
        "config/learner",
        "config/lr",
        "config/rank",
    ]
    assert points["run_name"].tolist() == ["trial_a"] * 3 + ["trial_b"] * 3 + ["trial_c"] * 3 + ["trial_d"] * 2
    assert points["step"].tolist() == [0, 1, 2] * 3 + [0, 1]
    assert set(points["status"]) == {"FINISHED"}
    assert points["trial_id"].tolist() == ["t0"] * 3 + ["t1"] * 3 + ["t2"] * 3 + ["t3"] * 2
    assert points["rank"].tolist()[:6] == [8] * 6 and points["rank"][6:9].isna().all()
    assert points["rank"].tolist()[9:] == [32, 32]
    assert points["test_accuracy"].tolist() == [0.91, 0.86, 0.81, 0.93, 0.84, 0.79, 0.95, 0.90, 0.70, 0.60, 0.50]
    assert points["density"].tolist() == [1.0, 0.5, 0.3, 1.0, 0.501, 0.298, 1.0, 0.5, 0.3, 1.0, 0.7]
    assert points["target_density"].isna().all()  # not logged here: NaN, not missing
    assert points["final_step"].tolist()[9:] == [3.0, 3.0] and points["final_step"][:9].isna().all()
    assert points["config/lr"].tolist()[::3] == ["0.01", "0.02", "0.001", "0.01"]


def test_load_points_can_keep_every_status(store: str) -> None:
    client = MlflowClient(tracking_uri=store)
    every = load_points(client, client.get_experiment_by_name(EXPERIMENT).experiment_id, statuses=None)
    assert sorted(set(every["run_name"])) == ["trial_a", "trial_b", "trial_c", "trial_d", "trial_failed"]


def test_final_points_are_each_completed_trials_last_step(points: pd.DataFrame) -> None:
    final = final_points(points)  # trial_d never reached its final step
    assert final["run_name"].tolist() == ["trial_a", "trial_b", "trial_c"]
    assert final["step"].tolist() == [2, 2, 2]


def _sample_std(*values: float) -> float:
    return statistics.stdev(values)


EXPECTED_TABLE = [
    # criterion, learner, density, test accuracy %, std, learned k, FLOPs M, n
    ("weight", "SPLoRA r8", 1.00, 92.0, _sample_std(91, 93), 1.0, 5.0, 2),
    ("weight", "SPLoRA r8", 0.50, 85.0, _sample_std(86, 84), 0.61, 3.1, 2),
    ("weight", "SPLoRA r8", 0.30, 80.0, _sample_std(81, 79), 0.39, 1.9, 2),
    ("grad", "SPLoRA r32", 1.00, 60.0, math.nan, 5.0, 5.0, 1),
    ("grad", "SPLoRA r32", 0.70, 50.0, math.nan, 4.0, 4.0, 1),
    ("lrp", "FP", 1.00, 95.0, math.nan, 10.0, 5.0, 1),
    ("lrp", "FP", 0.50, 90.0, math.nan, 5.0, 2.5, 1),
    ("lrp", "FP", 0.30, 70.0, math.nan, 3.0, 1.5, 1),
]


def test_table1_by_hand(points: pd.DataFrame) -> None:
    table = table1(points)
    assert table.columns.tolist() == [
        "criterion",
        "learner",
        "density",
        "test_accuracy",
        "test_accuracy_std",
        "learned_params_k",
        "flops_m",
        "n",
    ]
    assert len(table) == len(EXPECTED_TABLE)
    for row, expected in zip(table.itertuples(index=False), EXPECTED_TABLE, strict=True):
        assert tuple(row)[:2] == expected[:2]
        assert list(tuple(row)[2:]) == pytest.approx(list(expected[2:]), nan_ok=True)


def test_table1_with_paper_buckets(points: pd.DataFrame) -> None:
    table = table1(points, buckets=[0.3, 1.0])  # 0.5 is nearer 0.3 than 1.0
    splora = table[table["learner"] == "SPLoRA r8"]
    assert splora["density"].tolist() == [1.0, 0.3]
    assert splora["n"].tolist() == [2, 4]
    assert splora["test_accuracy"].tolist() == pytest.approx([92.0, (86 + 84 + 81 + 79) / 4])


def test_main_prints_front_and_table_and_writes_csv(store: str, tmp_path: Path, capsys) -> None:
    path = tmp_path / "table1.csv"
    assert main(["--experiment-name", EXPERIMENT, "--tracking-uri", store, "--csv", str(path)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "2 of 3 points on the front" in out
    front_rows = [line.split() for line in lines if line.split()[:1] in (["trial_a"], ["trial_b"], ["trial_c"])]
    # sorted by learned parameters; trial_c's final point (0.69, 3000) is dominated by trial_a's (0.80, 400)
    assert [row[0] for row in front_rows] == ["trial_b", "trial_a"]
    assert front_rows[0][:9] == ["trial_b", "t1", "2", "splora", "weight", "8", "0.7800", "380", "0.2980"]
    assert front_rows[1][-1] == "0.01"  # lr differs between trials: shown

    table_rows = [line.split() for line in lines if line.split()[:1] in (["weight"], ["grad"], ["lrp"])]
    assert table_rows == [
        ["weight", "SPLoRA", "r8", "1.00", "92.00±1.41", "1.0", "5.0", "2"],
        ["weight", "SPLoRA", "r8", "0.50", "85.00±1.41", "0.6", "3.1", "2"],
        ["weight", "SPLoRA", "r8", "0.30", "80.00±1.41", "0.4", "1.9", "2"],
        ["grad", "SPLoRA", "r32", "1.00", "60.00", "5.0", "5.0", "1"],
        ["grad", "SPLoRA", "r32", "0.70", "50.00", "4.0", "4.0", "1"],
        ["lrp", "FP", "1.00", "95.00", "10.0", "5.0", "1"],
        ["lrp", "FP", "0.50", "90.00", "5.0", "2.5", "1"],
        ["lrp", "FP", "0.30", "70.00", "3.0", "1.5", "1"],
    ]
    with path.open() as file:
        rows = list(csv.DictReader(file))
    assert [(r["criterion"], r["learner"], r["density"], r["n"]) for r in rows] == [
        (c, lr, str(d), str(n)) for c, lr, d, *_, n in EXPECTED_TABLE
    ]
    assert float(rows[0]["test_accuracy"]) == pytest.approx(92.0)
    assert float(rows[0]["test_accuracy_std"]) == pytest.approx(math.sqrt(2))
    assert float(rows[1]["learned_params_k"]) == pytest.approx(0.61)
    assert float(rows[1]["flops_m"]) == pytest.approx(3.1)
    assert rows[3]["test_accuracy_std"] == ""  # one point: no spread
    assert "Table 1 over 11 points (every step) of 4 finished trials" in out


def test_main_all_steps_front_and_plots(store: str, tmp_path: Path, capsys) -> None:
    html, png = tmp_path / "front.html", tmp_path / "front.png"
    argv = ["--experiment-name", EXPERIMENT, "--tracking-uri", store, "--all-steps", "--html", str(html)]
    assert main([*argv, "--png", str(png)]) == 0
    out = capsys.readouterr().out
    assert "5 of 11 points on the front" in out
    front_rows = [
        line.split()[:3] for line in out.splitlines() if line.startswith(" trial_") or line.startswith("trial_")
    ]
    assert front_rows == [["trial_b", "t1", "2"], ["trial_a", "t0", "2"], ["trial_a", "t0", "1"]] + [
        ["trial_b", "t1", "0"],
        ["trial_c", "t2", "0"],
    ]
    assert "trial_c" in html.read_text(encoding="utf-8") and png.read_bytes()[:4] == b"\x89PNG"


def test_main_uses_the_environment_tracking_uri(store: str, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    assert main(["--experiment-name", EXPERIMENT, "--objective", "test_accuracy:max"]) == 0
    assert "1 of 3 points on the front" in capsys.readouterr().out  # trial_c ends at 0.70 < 0.81


def test_unknown_experiment_is_one_line_and_exit_2(store: str, capsys) -> None:
    assert main(["--experiment-name", "nope", "--tracking-uri", store]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("error: no experiment named 'nope' at sqlite:///")
    assert "experiments there: Default, another-study, digits-study" in err


def test_missing_store_is_not_created(tmp_path: Path, capsys) -> None:
    database = tmp_path / "absent.db"
    assert main(["--experiment-name", EXPERIMENT, "--tracking-uri", f"sqlite:///{database}"]) == 2
    assert "error: no MLflow store at" in capsys.readouterr().err
    assert not database.exists()


def test_every_flag_states_its_default() -> None:
    for action in build_parser()._actions:
        if action.dest != "help":
            assert "default" in action.help or "required" in action.help, action.dest
