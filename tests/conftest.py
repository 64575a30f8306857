"""Test-session settings: deterministic, small thread pool, no network, no telemetry."""

import os

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TORCH_HOME", os.path.join(os.path.dirname(__file__), ".torch_home_unused"))

import torch  # noqa: E402

torch.set_num_threads(2)
