"""A failed trial's exception as one line, for its run's ``error`` tag (``study.tracking``).

Read from what Tune has just written beside the trial on the driver (not yet synced to storage): the pickled
exception if it can be loaded here, else the last line of the traceback text.
"""

from __future__ import annotations

from pathlib import Path

from ray import cloudpickle
from ray.tune.experiment import Trial

from study.outcome import one_line

__all__ = ["error_line"]


def error_line(trial: Trial) -> str:
    """The trial's exception as one line, e.g. ``NonFiniteLossError: training loss became nan at batch 0; ...``."""
    error = None
    path = trial.pickled_error_file
    if path and Path(path).is_file():
        try:
            with open(path, "rb") as file:
                error = cloudpickle.load(file)
        except Exception:  # unreadable (e.g. its class cannot be imported here): fall back on the text
            error = None
    cause = getattr(error, "cause", None) or error
    if cause is not None:
        lines = [line for line in str(cause).splitlines() if line.strip()]
        return one_line(f"{type(cause).__name__}: {lines[0] if lines else ''}")
    path = trial.error_file
    if path and Path(path).is_file():
        lines = [line for line in Path(path).read_text().splitlines() if line.strip()]
        if lines:  # the traceback's last line, "package.module.ErrorType: message"
            kind, _, message = lines[-1].partition(": ")
            return one_line(f"{kind.rsplit('.', 1)[-1]}: {message}" if message else lines[-1])
    return "the trial raised an error"
