"""A study on a two-node Ray cluster on this machine, with one node killed while a trial runs on it.

Run by tests/study/test_multinode.py in its own process (the test session's Ray is single-node):
``python tests/study/multinode_study.py WORKDIR CACHE_DIR`` prints one line ``RESULT {json}`` saying what happened.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

SPACE = """
description = "multi-node test: two trials, three pruning steps each"
[fixed]
learner = "splora"
criterion = "weight"
epochs = 1
recovery_epochs = 1
batch_size = 64
max_score_batches = 2
densities = [0.8, 0.6, 0.4]
rank = 4
init_range = 0.001
[params.lr]
type = "float"
low = 0.01
high = 0.05
log = true
"""


def main(workdir: Path, cache_dir: Path) -> int:
    import ray
    from ray.cluster_utils import Cluster

    from study.tune import main as study_main

    space = workdir / "multinode.toml"
    space.write_text(SPACE)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    worker = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    head_id, worker_id = cluster.head_node.node_id, worker.node_id
    storage = workdir / "storage"
    killed: dict[str, float] = {}

    def kill_worker_after_first_checkpoints() -> None:
        # Both trials have reported step 0 (one checkpoint each): the worker's trial is mid-experiment now.
        deadline = time.time() + 240
        while time.time() < deadline:
            if len(list(storage.glob("multinode/trial-*/checkpoint_*"))) >= 2:
                cluster.remove_node(worker, allow_graceful=False)
                killed["at"] = time.time()
                return
            time.sleep(0.2)

    killer = threading.Thread(target=kill_worker_after_first_checkpoints, daemon=True)
    killer.start()
    started = time.time()
    code = study_main(
        [
            "--space", str(space), "--name", "multinode", "--num-samples", "2", "--cpus-per-trial", "1",
            "--max-failures", "2", "--storage-path", str(storage),
            "--tracking-uri", f"sqlite:///{workdir / 'mlflow.db'}", "--cache-dir", str(cache_dir),
            "--address", cluster.address,
        ]
    )  # fmt: skip
    killer.join(timeout=1)
    print(
        "RESULT "
        + json.dumps(
            {
                "exit_code": code,
                "head_id": head_id,
                "worker_id": worker_id,
                "killed": "at" in killed,
                "seconds": time.time() - started,
            }
        )
    )
    ray.shutdown()
    cluster.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(Path(sys.argv[1]), Path(sys.argv[2])))
