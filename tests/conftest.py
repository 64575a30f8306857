"""Test-session settings: deterministic, small thread pool, no network, no telemetry."""

import os

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import torch  # noqa: E402

# One thread: on a shared 2-core machine, OpenMP spin-waiting across processes makes 2 threads far slower.
torch.set_num_threads(1)


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def spa_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One cache of pretrained backbones for the whole test session (pretraining runs once)."""
    return str(tmp_path_factory.mktemp("spa-cache"))
