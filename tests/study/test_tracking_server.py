"""A study against a real ``mlflow server`` (as cluster.yaml starts one): the artifacts land where the server says,
and ``study.report`` reads the study back, and exports its front's models, through the server."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pandas as pd
from mlflow.tracking import MlflowClient

from study import report
from study.tune import main
from tests.study.mlflow_servers import mlflow_server


def test_a_study_against_a_tracking_server_puts_its_artifacts_in_the_servers_store(
    tmp_path: Path, backbone_cache, ray_cluster
) -> None:
    with mlflow_server(tmp_path / "server") as server:
        args = [
            "--space", "splora_weight", "--smoke", "--name", "served", "--seed", "2",
            "--storage-path", str(tmp_path / "runs"), "--tracking-uri", server.url, "--cache-dir", backbone_cache,
        ]  # fmt: skip
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert main(args) == 0
        client = MlflowClient(tracking_uri=server.url)
        experiment = client.get_experiment_by_name("served")
        assert experiment.artifact_location.startswith("mlflow-artifacts:"), experiment.artifact_location
        assert f"{server.url}/#/experiments/{experiment.experiment_id}/runs?workflowType=machine_learning" in (
            out.getvalue()
        )

        stored = {path.name for path in server.artifacts.rglob("*") if path.is_file()}
        assert {"pareto_front.csv", "pareto_front.png", "pareto_front_steps.csv"} <= stored
        assert "model.pt2" in stored and "kept_channels.png" in stored and "MLmodel" in stored
        assert not (tmp_path / "runs" / "served" / "mlartifacts").exists(), "nothing in a local artifact folder"

        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            code = report.main(
                ["--tracking-uri", server.url, "--experiment-name", "served", "--export", str(tmp_path / "export")]
            )
        assert code == 0, printed.getvalue()
        assert "Pareto front over each trial's final values of 'served'" in printed.getvalue()
        index = pd.read_csv(tmp_path / "export" / report.EXPORT_INDEX)
        assert len(index) >= 1 and index["model_id"].notna().all()
        for path in index["path"]:
            assert (Path(path) / "MLmodel").is_file() and (Path(path) / "data" / "model.pt2").is_file()
