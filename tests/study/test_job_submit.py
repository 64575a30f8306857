"""``ray job submit --working-dir . -- python -m study.tune ...`` against a Ray head started for this test."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_study_runs_as_a_submitted_job(tmp_path: Path, backbone_cache: str) -> None:
    bin_dir = Path(sys.executable).parent
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",  # the job's `python` is this environment's
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    env.pop("RAY_ADDRESS", None)
    gcs_port, dashboard_port, agent_port = _free_port(), _free_port(), _free_port()
    # --block: the head lives as long as this process, so stopping it stops only this cluster (`ray stop` would
    # stop every Ray on the machine, the test session's too).
    head = subprocess.Popen(
        [str(bin_dir / "ray"), "start", "--head", "--block", "--num-cpus", "2", "--port", str(gcs_port),
         "--include-dashboard", "true", "--dashboard-port", str(dashboard_port),
         # The job agent's default port (52365) is taken by any other Ray on the machine, the session's own included.
         "--dashboard-agent-listen-port", str(agent_port), "--disable-usage-stats"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        address = f"http://127.0.0.1:{dashboard_port}"
        deadline = time.time() + 90
        while subprocess.run(
            [str(bin_dir / "ray"), "job", "list", "--address", address], env=env, capture_output=True
        ).returncode:
            assert time.time() < deadline, "the Ray head's job server did not come up"
            time.sleep(1)
        while True:
            submitted = subprocess.run(
                [str(bin_dir / "ray"), "job", "submit", "--address", address, "--working-dir", str(ROOT), "--",
                 "python", "-m", "study.tune", "--space", "splora_weight", "--smoke", "--address", "auto",
                 "--name", "job", "--storage-path", str(tmp_path / "storage"),
                 "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--cache-dir", backbone_cache],
                env=env, capture_output=True, text=True, timeout=400,
            )  # fmt: skip
            # The job server answers before the node's job agent registers; Ray says "try again later" then.
            if "No available agent" not in submitted.stderr or time.time() > deadline:
                break
            time.sleep(2)
        assert submitted.returncode == 0, submitted.stdout[-3000:] + submitted.stderr[-3000:]
        assert "succeeded" in submitted.stdout + submitted.stderr
    finally:
        head.terminate()
        head.wait(timeout=60)

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("job")
    runs = client.search_runs([experiment.experiment_id], "tags.study_role = 'trial'")
    assert sorted(r.info.status for r in runs) == ["FINISHED", "FINISHED"]
    assert len(list((tmp_path / "storage" / "job").glob("trial-*/checkpoint_*"))) == 2
