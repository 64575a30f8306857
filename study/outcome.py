"""What happened to a trial, judged once from its last result, so Optuna and MLflow record the same thing.

A trial ends in one of three ways:

- ``complete``: it reported its final pruning step and every objective there is a finite number;
- ``pruned``: it ended without error before its final step, so a scheduler (ASHA) stopped it early;
  its values are not final and must never enter the front;
- ``failed``: it raised (NaN loss, out of memory, a bad sample), or its final objectives hold NaN or infinity.

Plain data in, plain data out: no Ray, Optuna or MLflow here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from spa.validation import is_finite_number
from study.names import FINAL_STEP

__all__ = ["COMPLETE", "PRUNED", "FAILED", "EVERY_TRIAL_FAILED", "Outcome", "judge", "failures_verdict", "one_line"]

COMPLETE, PRUNED, FAILED = "complete", "pruned", "failed"
# The command's exit status when the study ran to its end but every trial failed (nothing to learn from it).
EVERY_TRIAL_FAILED = 1


@dataclass(frozen=True)
class Outcome:
    state: str  # COMPLETE | PRUNED | FAILED
    values: tuple[float, ...] | None = None  # the objectives, only when COMPLETE
    reason: str | None = None  # one line, when not COMPLETE
    step: int | None = None  # the last step reported, if any


def one_line(text: object, limit: int = 500) -> str:
    """Collapse whitespace; cut to ``limit`` characters (MLflow tags and Optuna attributes stay readable)."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def judge(result: Mapping[str, Any] | None, metrics: Sequence[str], *, error: bool = False) -> Outcome:
    """The outcome of a trial whose last reported result is ``result`` (None: it reported nothing)."""
    step = _integer(result.get("step")) if result else None
    if error:
        return Outcome(FAILED, reason="the trial raised an error", step=step)
    if not result or step is None:
        return Outcome(PRUNED, reason="stopped before it reported a step", step=None)
    final_step = _integer(result.get(FINAL_STEP))
    if final_step is not None and step < final_step:
        return Outcome(PRUNED, reason=f"stopped after step {step} of {final_step}", step=step)
    values = []
    for metric in metrics:
        value = result.get(metric)
        if not is_finite_number(value):
            return Outcome(FAILED, reason=f"objective {metric} is {value!r} at the final step {step}", step=step)
        values.append(float(value))
    return Outcome(COMPLETE, values=tuple(values), step=step)


def _integer(value: Any) -> int | None:
    return int(value) if is_finite_number(value) else None


def failures_verdict(trials: int, failed: int, first_reason: str | None = None) -> tuple[int, str | None]:
    """The exit status of a study that ran to its end with ``failed`` of its ``trials`` failed, and the line that
    says so (None when none failed): every trial failed -> ``EVERY_TRIAL_FAILED``; some -> 0."""
    if failed == 0:
        return 0, None
    reason = f"; the first: {one_line(first_reason, 300)}" if first_reason else ""
    if failed == trials:
        return EVERY_TRIAL_FAILED, f"every one of the {trials} trials failed{reason}"
    return 0, f"{failed} of {trials} trials failed{reason}"
