"""One local Ray for the whole test session (starting one costs seconds); every in-process study uses it."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Never a foreign Ray: without an address (or with "auto") Ray joins the machine's latest `ray start` cluster, and
# RAY_ADDRESS may name one; the drivers these tests start, in process or not, get a Ray of their own.
os.environ["RAY_ADDRESS"] = "local"


@pytest.fixture(scope="session")
def ray_cluster():
    """A 2-CPU, GPU-less Ray shared by the session; the driver uses it as it is and leaves it running."""
    import ray

    if not ray.is_initialized():
        # address="local": a new Ray of its own, never a cluster another process (e.g. `ray start`) left behind.
        ray.init(address="local", num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def backbone_cache(spa_cache_dir: str) -> str:
    """The session's backbone cache, with the digits backbone already trained."""
    from spa.pretrain import PretrainConfig, pretrained_backbone

    pretrained_backbone(PretrainConfig(arch="resnet18"), spa_cache_dir)
    return spa_cache_dir


@pytest.fixture
def snapshot_fails_once(monkeypatch):
    """``study.driver_state.write_snapshot`` raising ``OSError("bucket unreachable")`` the first time it is called,
    then writing as it does (a storage that is out of reach for a moment)."""
    from study import driver_state

    failures = [1]
    real = driver_state.write_snapshot

    def flaky(*args, **kwargs):
        if failures[0]:
            failures[0] -= 1
            raise OSError("bucket unreachable")
        return real(*args, **kwargs)

    monkeypatch.setattr(driver_state, "write_snapshot", flaky)
