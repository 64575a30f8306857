"""What the benchmark scripts share: the flags that set the timing, interleaved rounds (so machine noise hits every
variant alike), and the ``name=value`` last line they print."""

from __future__ import annotations

import argparse
import os
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


# --clock's choices: wall time, or this process's CPU seconds (all its threads).
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}


def add_clock_flag(parser: argparse.ArgumentParser) -> None:
    """``--clock``: what ``timed_rounds`` measures."""
    parser.add_argument(
        "--clock",
        choices=tuple(CLOCKS),
        default="wall",
        help="wall: elapsed time; cpu: this process's CPU seconds, which a loaded machine inflates far less (with "
        "--threads 1 it is the step's own work; with more, idle worker threads' spinning counts) (default: wall)",
    )


def timed_rounds(calls: dict[str, Callable[[], object]], args: argparse.Namespace) -> dict[str, list[float]]:
    """``round_robin`` under the flags of ``add_timing_flags`` and ``add_clock_flag``, printing the load average
    before and after: a ratio means little without the load it was measured at."""
    print(f"load average before: {os.getloadavg()[0]:.1f}", flush=True)
    times = round_robin(calls, args.rounds, args.warmup, clock=CLOCKS[args.clock])
    print(f"load average after: {os.getloadavg()[0]:.1f} ({args.clock} clock, {args.threads} threads)")
    return times


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
