"""Timing shared by the benchmark scripts: interleaved rounds, so machine noise hits every variant alike."""

from __future__ import annotations

import time
from collections.abc import Callable


def round_robin(calls: dict[str, Callable[[], object]], rounds: int, warmup: int) -> dict[str, list[float]]:
    """Seconds of each call per round; every round runs every call once, in turn, so noise hits all alike."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for round_index in range(warmup + rounds):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            elapsed = time.perf_counter() - start
            if round_index >= warmup:
                times[name].append(elapsed)
    return times
