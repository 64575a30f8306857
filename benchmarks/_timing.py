"""What the benchmark scripts share: the flags that set the timing, interleaved rounds (so machine noise hits every
variant alike), and the ``name=value`` last line they print."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable


def add_timing_flags(
    parser: argparse.ArgumentParser,
    *,
    threads: int,
    rounds: int,
    warmup: int,
    rounds_help: str = "timed rounds per variant",
) -> None:
    """``--threads`` (torch threads), ``--rounds`` and ``--warmup`` (of ``round_robin``), with a script's defaults."""
    parser.add_argument("--threads", type=int, default=threads, help=f"torch threads (default: {threads})")
    parser.add_argument("--rounds", type=int, default=rounds, help=f"{rounds_help} (default: {rounds})")
    parser.add_argument("--warmup", type=int, default=warmup, help=f"untimed rounds first (default: {warmup})")


def round_robin(
    calls: dict[str, Callable[[], object]], rounds: int, warmup: int, clock: Callable[[], float] = time.perf_counter
) -> dict[str, list[float]]:
    """Seconds of each call per round; every round runs every call once, in turn, so noise hits all alike.

    ``clock``: wall time by default; ``time.process_time`` counts only this process's CPU seconds (all its threads),
    which a loaded machine inflates far less, since time spent waiting for a core is not counted."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for round_index in range(warmup + rounds):
        for name, call in calls.items():
            start = clock()
            call()
            elapsed = clock() - start
            if round_index >= warmup:
                times[name].append(elapsed)
    return times


def last_line(values: dict[str, float], digits: int = 2) -> str:
    """``name=value`` pairs separated by single spaces, values rounded to ``digits`` decimals."""
    return " ".join(f"{name}={value:.{digits}f}" for name, value in values.items())
