"""A 3-trial smoke study, read back as a user would: the front's logged models (loaded in a fresh process with MLflow
and torch only), the parent run's study metrics, the registry's aliases, and the MLflow UI in a real browser."""

from __future__ import annotations

import glob
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from spa.checkpoint import load_checkpoint
from spa.counting import total_parameters
from spa.export import restore_model
from study.front_measures import Member, Reference, alias_targets
from study.logged_models import model_id_of
from study.tune import main
from tests.study.mlflow_servers import CHROMIUM_MISSING, dump_dom, find_chromium, mlflow_server
from tests.study.test_logged_models import FRESH_LOAD

NAME, REGISTERED = "splora_lrp-smoke", "front-of-smoke"
METRICS = ("val_accuracy", "learned_params")

# One fresh process loads every model (MLflow's import is the slow part): {model uri: what FRESH_LOAD reports}.
FRESH_LOAD_ALL = """
import json, subprocess, sys
results = {}
for uri in sys.argv[2:]:
    done = subprocess.run([sys.executable, "-I", "-c", LOAD, sys.argv[1], uri], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    results[uri] = json.loads(done.stdout.strip().splitlines()[-1])
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def study(tmp_path_factory, backbone_cache, ray_cluster):
    root = tmp_path_factory.mktemp("study-models")
    args = [
        "--space", "splora_lrp", "--smoke", "--num-samples", "3", "--seed", "1",
        "--storage-path", str(root / "runs"), "--tracking-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--cache-dir", backbone_cache, "--register-model", REGISTERED,
    ]  # fmt: skip
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(args) == 0
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(NAME)
    runs = list(client.search_runs([experiment.experiment_id], max_results=100))
    parent = next(run for run in runs if "mlflow.parentRunId" not in run.data.tags)
    children = sorted((r for r in runs if "mlflow.parentRunId" in r.data.tags), key=lambda r: r.info.end_time)
    models = list(client.search_logged_models([experiment.experiment_id]))
    return {
        "root": root,
        "out": out.getvalue(),
        "client": client,
        "experiment": experiment,
        "parent": parent,
        "children": children,
        "models": models,
    }


def final(run) -> tuple[float, float]:
    return tuple(run.data.metrics[m] for m in METRICS)


def hypervolume_by_hand(points: list[tuple[float, float]], chance: float, reference_params: float) -> float:
    """Independent of study.front_measures: normalise, then sum the dominated area over a sweep in params."""
    scores = [
        (
            min(1.0, max(0.0, (a - chance) / (1 - chance))),
            min(1.0, max(0.0, math.log(reference_params / p) / math.log(reference_params))),
        )
        for a, p in points
    ]
    area = 0.0
    for y_low, y_high in zip(*[sorted({0.0, *(s[1] for s in scores)})[i:] for i in (0, 1)], strict=False):
        # Between two consecutive parameter scores the dominated accuracy is the best of the points reaching higher.
        area += (y_high - y_low) * max((a for a, p in scores if p >= y_high), default=0.0)
    return area


def test_the_experiment_says_model_training_and_the_summary_gives_its_url(study) -> None:
    experiment = study["experiment"]
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    url = f"#/experiments/{experiment.experiment_id}/runs?workflowType=machine_learning"
    assert url in study["out"]
    assert experiment.artifact_location.startswith((study["root"] / "runs" / NAME).as_uri())


def test_parent_metrics_have_one_point_per_finished_trial_and_match_the_child_runs(study) -> None:
    client, parent, children = study["client"], study["parent"], study["children"]
    assert [run.info.status for run in children] == ["FINISHED"] * 3

    def history(key: str) -> list[tuple[int, float]]:
        return sorted((m.step, m.value) for m in client.get_metric_history(parent.info.run_id, key))

    hypervolumes = history("hypervolume")
    assert [step for step, _ in hypervolumes] == [1, 2, 3]
    values = [value for _, value in hypervolumes]
    assert all(b >= a for a, b in zip(values, values[1:], strict=False)) and values[-1] > 0
    chance, reference_params = (float(v) for v in parent.data.tags["hypervolume_reference"].split(","))
    unpruned = [m.value for m in client.get_metric_history(children[0].info.run_id, "params") if m.step == 0]
    assert (chance, reference_params) == (pytest.approx(1 / 5), unpruned[0])  # digits 5-9; the unpruned network
    expected = [hypervolume_by_hand([final(r) for r in children[:k]], chance, reference_params) for k in (1, 2, 3)]
    assert values == pytest.approx(expected, rel=1e-9)

    fronts = [
        sum(not any(_dominates(o, p) for o in pts) for p in pts)
        for pts in ([final(r) for r in children[:k]] for k in (1, 2, 3))
    ]
    assert history("front_size") == [(1, fronts[0]), (2, fronts[1]), (3, fronts[2])]
    assert history("trials_complete") == [(1, 1.0), (2, 2.0), (3, 3.0)]
    assert [v for _, v in history("trials_failed")] == [0.0] * 3
    best = [max(final(r)[0] for r in children[:k]) for k in (1, 2, 3)]
    assert [v for _, v in history("best_val_accuracy")] == pytest.approx(best)
    by_compute = history("hypervolume_by_compute_s")
    assert [v for _, v in by_compute] == pytest.approx(values)
    assert [s for s, _ in by_compute] == sorted(s for s, _ in by_compute) and by_compute[-1][0] > 0


def _dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] >= b[0] and a[1] <= b[1] and a != b


def _front_models(study) -> dict[str, object]:
    """run id -> the logged model of that run's final step, for the final front's runs."""
    children = [run for run in study["children"] if run.data.tags.get("pareto") == "true"]
    client = study["client"]
    steps = {
        r.info.run_id: max(m.step for m in client.get_metric_history(r.info.run_id, "val_accuracy")) for r in children
    }
    found = {}
    for model in study["models"]:
        if model.source_run_id in steps and int(model.tags["step"]) == steps[model.source_run_id]:
            found[model.source_run_id] = model
    assert set(found) == set(steps), "one logged model per front member"
    return found


def test_every_front_member_is_a_model_that_loads_with_mlflow_and_torch_alone(study) -> None:
    client, root = study["client"], study["root"]
    models = _front_models(study)
    for model in models.values():
        assert model.tags["on_front"] == "true"
        assert {"learner", "criterion", "rank", "trial", "step", "on_step_front"} <= set(model.tags)
        assert {"val_accuracy", "test_accuracy", "learned_params", "params", "flops", "density"} <= {
            m.key for m in model.metrics
        }
    steps_front = pd.read_csv(root / "runs" / NAME / "pareto_front_steps.csv")
    logged = {(m.source_run_id, int(m.tags["step"])) for m in study["models"]}
    assert set(zip(steps_front["run_id"], steps_front["step"], strict=True)) <= logged, "step-front members too"

    uris = [f"models:/{model.model_id}" for model in models.values()]
    done = subprocess.run(
        [sys.executable, "-I", "-c", f"LOAD = {FRESH_LOAD!r}\n{FRESH_LOAD_ALL}", client.tracking_uri, *uris],
        capture_output=True,
        text=True,
        timeout=900,
        cwd="/",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    fresh = json.loads(done.stdout.strip().splitlines()[-1])
    for run_id, model in models.items():
        result = fresh[f"models:/{model.model_id}"]
        assert result["imported"] == []
        name = next(r.info.run_name for r in study["children"] if r.info.run_id == run_id)
        (path,) = glob.glob(str(root / "runs" / NAME / f"{name}_*" / "checkpoint_*" / "checkpoint.pt"))
        trained = restore_model(load_checkpoint(Path(path).parent)).eval()
        with torch.inference_mode():
            expected = trained(torch.tensor(result["example"]))
        torch.testing.assert_close(torch.tensor(result["logits"]), expected, rtol=1e-4, atol=1e-6)
        run_params = next(r for r in study["children"] if r.info.run_id == run_id).data.metrics["params"]
        assert result["params"] == run_params == total_parameters(trained)


def test_registered_aliases_point_at_the_right_front_models(study) -> None:
    client = study["client"]
    models = _front_models(study)
    children = {run.info.run_id: run for run in study["children"]}
    chance, reference_params = (float(v) for v in study["parent"].data.tags["hypervolume_reference"].split(","))
    members = [Member(model.model_id, *final(children[run_id])) for run_id, model in models.items()]
    expected = alias_targets(members, Reference(chance, reference_params))
    best = max(members, key=lambda m: (m.val_accuracy, -m.learned_params))
    assert expected["best-accuracy"] == best.key
    for alias, model_id in expected.items():
        assert model_id_of(client.get_model_version_by_alias(REGISTERED, alias).source) == model_id, alias
    versions = client.search_model_versions(f"name = '{REGISTERED}'")
    assert {model_id_of(v.source) for v in versions if v.tags.get("on_front") == "true"} == set(expected.values()) | {
        m.key for m in members
    }


@pytest.mark.skipif(find_chromium() is None, reason=CHROMIUM_MISSING)
def test_the_ui_shows_the_study_in_model_training_mode_with_its_runs_and_models(study) -> None:
    experiment_id = study["experiment"].experiment_id
    printed = re.search(r"runs:\s+(\S+)", study["out"]).group(1)
    with mlflow_server(study["root"] / "ui", command="ui", backend_store_uri=study["client"].tracking_uri) as server:
        doms = {
            "runs": dump_dom(printed.replace("http://127.0.0.1:5000", server.url)),
            "models": dump_dom(f"{server.url}/#/experiments/{experiment_id}/models?workflowType=machine_learning"),
        }
    for name, dom in doms.items():  # kept for a look when an assertion below fails
        (study["root"] / f"dom-{name}.html").write_text(dom)
    assert f"Runs - Experiment {experiment_id} - MLflow" in doms["runs"]
    # The app is in model-training mode: its navigation carries that workflow type, and has the Models tab.
    for tab in ("runs", "models"):
        link = rf'href="#/experiments/{experiment_id}/{tab}\?[^"]*workflowType=machine_learning"'
        assert re.search(link, doms["runs"]), tab
    # The runs table shows the study's parent run, the trials' runs folded under it (MLflow nests child runs).
    assert f">{study['parent'].info.run_name}<" in doms["runs"]
    assert f"Logged Models - Experiment {experiment_id} - MLflow" in doms["models"]
    # The Models tab lists every logged model with the trial run it came from.
    for model in study["models"]:
        assert f">{model.name}<" in doms["models"], model.name
        assert f">{model.tags['trial']}<" in doms["models"], model.tags["trial"]
    assert set(_front_models(study)) <= {model.source_run_id for model in study["models"]}
