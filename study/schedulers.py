"""The trial schedulers a study may use, by name: which trials Tune lets run on and which it stops early.

A trial a scheduler stops is told to Optuna as PRUNED and never enters a front (``study.outcome``). Ray is
imported only when a scheduler is built, so the command can check ``--scheduler`` without it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["SCHEDULERS", "make_scheduler"]

SCHEDULERS = ("fifo", "asha")


def make_scheduler(name: str, *, metric: str, mode: str, max_step: int) -> Any:
    """Tune's scheduler ``name``; ``metric``/``mode``: what it compares, ``max_step``: the last pruning step."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if name == "asha":
        # ASHA compares the first objective at pruning steps 1, 2, 4, ...; trials it stops are told PRUNED.
        return ASHAScheduler(
            time_attr="step", metric=metric, mode=mode, max_t=max_step, grace_period=1, reduction_factor=2
        )
    if name == "fifo":
        return FIFOScheduler()
    raise ValueError(f"scheduler={name!r} is not allowed; allowed: {', '.join(SCHEDULERS)}")
