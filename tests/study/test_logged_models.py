"""study.logged_models and study.registry against a real MLflow store: a logged model loads in a fresh process with
MLflow and torch alone and gives the trained network's logits; aliases follow the front."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.fs
import pytest
import torch
from mlflow import MlflowClient
from mlflow.entities import Metric

from spa import counting
from spa.export import restore_model
from study.front_measures import Member, Reference
from study.logged_models import (
    CHANNELS_PICTURE,
    example_input,
    log_step_model,
    model_id_of,
    read_checkpoint,
    set_on_front,
)
from study.registry import register_front
from tests.spa.test_export import pruned_checkpoint

STEP_METRICS = {"val_accuracy": 0.8, "test_accuracy": 0.75, "learned_params": 5000.0, "density": 0.4}

# Run with -I (no PYTHONPATH, no current directory on sys.path): only what is installed, and the test checks
# that neither this project nor torchvision was imported to load and run the model.
FRESH_LOAD = """
import json, sys, time
import mlflow, mlflow.pytorch, torch
mlflow.set_tracking_uri(sys.argv[1])
started = time.perf_counter()
model = mlflow.pytorch.load_model(sys.argv[2])
loaded = time.perf_counter() - started
example = mlflow.models.Model.load(sys.argv[2]).load_input_example()
with torch.inference_mode():
    logits = model(torch.from_numpy(example))
print(json.dumps({
    "load_s": loaded,
    "logits": logits.tolist(),
    "example": example.tolist(),
    "params": sum(p.numel() for p in model.parameters()),
    "imported": sorted(m for m in ("spa", "study", "torchvision") if m in sys.modules),
}))
"""


def load_in_fresh_process(tracking_uri: str, model_uri: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-I", "-c", FRESH_LOAD, tracking_uri, model_uri],
        capture_output=True,
        text=True,
        timeout=300,
        cwd="/",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory) -> Path:
    return pruned_checkpoint(tmp_path_factory.mktemp("checkpoint"), "splora", 0.5)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[MlflowClient, str]:
    root = tmp_path_factory.mktemp("mlflow")
    client = MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow.db")
    experiment_id = client.create_experiment("models", artifact_location=(root / "artifacts").as_uri())
    return client, experiment_id


def test_checkpoint_reads_the_same_from_a_path_a_uri_and_a_filesystem(checkpoint_dir: Path) -> None:
    readings = [
        read_checkpoint(checkpoint_dir),
        read_checkpoint(checkpoint_dir.as_uri()),
        read_checkpoint(str(checkpoint_dir), pyarrow.fs.LocalFileSystem()),
    ]
    for reading in readings[1:]:
        assert reading["config"] == readings[0]["config"]
        assert all(torch.equal(reading["model"][k], v) for k, v in readings[0]["model"].items())
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        read_checkpoint(checkpoint_dir.parent / "absent")


def test_example_input_is_fixed_and_at_the_input_size() -> None:
    example = example_input((3, 32, 32))
    assert example.shape == (2, 3, 32, 32) and example.dtype == np.float32
    assert np.array_equal(example, example_input((3, 32, 32)))
    assert set(np.unique(example)) <= {v / 4 for v in range(-4, 5)}


def test_a_logged_model_loads_with_mlflow_and_torch_alone_and_gives_the_trained_logits(
    store, checkpoint_dir: Path
) -> None:
    client, experiment_id = store
    run = client.create_run(experiment_id, run_name="trial-007")
    run_id = run.info.run_id
    timestamp = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, v, timestamp, 1) for k, v in STEP_METRICS.items()])
    checkpoint = read_checkpoint(checkpoint_dir)
    logged = log_step_model(
        client,
        experiment_id=experiment_id,
        run_id=run_id,
        run_name="trial-007",
        step=1,
        checkpoint=checkpoint,
        params={"rank": 4, "learner": "splora"},
        tags={"learner": "splora", "criterion": "lrp", "rank": "4", "on_front": "true"},
    )
    model = client.get_logged_model(logged.model_id)
    assert model.name == "trial-007-step-1" and model.source_run_id == run_id
    assert str(model.status) in ("READY", "LoggedModelStatus.READY")
    assert model.tags["on_front"] == "true" and model.tags["trial"] == "trial-007" and model.tags["step"] == "1"
    assert {k: model.tags[k] for k in ("learner", "criterion", "rank")} == {
        "learner": "splora",
        "criterion": "lrp",
        "rank": "4",
    }
    assert model.params == {"rank": "4", "learner": "splora"}
    assert {m.key: m.value for m in model.metrics} == STEP_METRICS and {m.step for m in model.metrics} == {1}
    # Linked to its run at step 1; the run's own metric history keeps one point per step.
    outputs = client.get_run(run_id).outputs.model_outputs
    assert [(o.model_id, o.step) for o in outputs] == [(logged.model_id, 1)]
    assert len(client.get_metric_history(run_id, "val_accuracy")) == 1
    artifacts = {a.path for a in client.list_logged_model_artifacts(logged.model_id)}
    assert {"MLmodel", "data", "input_example.json", CHANNELS_PICTURE} <= artifacts
    assert logged.size_bytes > 0

    fresh = load_in_fresh_process(client.tracking_uri, f"models:/{logged.model_id}")
    assert fresh["imported"] == []
    trained = restore_model(checkpoint).eval()
    example = torch.tensor(fresh["example"], dtype=torch.float32)
    assert np.array_equal(example.numpy(), example_input((3, 32, 32)))
    with torch.inference_mode():
        expected = trained(example)
    torch.testing.assert_close(torch.tensor(fresh["logits"]), expected, rtol=1e-4, atol=1e-6)
    assert fresh["params"] == counting.total_parameters(trained)

    set_on_front(client, logged.model_id, False)
    assert client.get_logged_model(logged.model_id).tags["on_front"] == "false"


def test_register_front_keeps_versions_and_moves_aliases(store) -> None:
    client, experiment_id = store
    run_id = client.create_run(experiment_id, run_name="trial-registry").info.run_id
    ids = {name: client.create_logged_model(experiment_id, name=name, source_run_id=run_id).model_id for name in "abcd"}
    reference = Reference(0.2, 1e6)
    sources = {model_id: run_id for model_id in ids.values()}
    first = [Member(ids["a"], 0.9, 5e5), Member(ids["b"], 0.85, 2e3), Member(ids["c"], 0.6, 1e3)]
    versions = register_front(client, "front", first, sources, reference)
    assert sorted(versions) == sorted(ids[n] for n in "abc")

    def alias(name: str) -> str | None:
        return model_id_of(client.get_model_version_by_alias("front", name).source)

    assert (alias("best-accuracy"), alias("fewest-learned-params"), alias("knee")) == (ids["a"], ids["c"], ids["b"])
    # d enters the front and pushes c off it: c keeps its version, tagged off the front.
    second = [Member(ids["a"], 0.9, 5e5), Member(ids["b"], 0.85, 2e3), Member(ids["d"], 0.7, 900)]
    versions = register_front(client, "front", second, sources, reference)  # read back from the registry
    assert len(versions) == 4
    assert alias("fewest-learned-params") == ids["d"]
    on_front = {model_id_of(v.source): v.tags["on_front"] for v in client.search_model_versions("name = 'front'")}
    assert on_front == {ids["a"]: "true", ids["b"]: "true", ids["c"]: "false", ids["d"]: "true"}
