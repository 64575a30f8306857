"""The names and defaults more than one part of a study uses, each defined here once.

Plain data and two small functions; no Ray, Optuna, MLflow or torch, so the command, the trainable, the MLflow
callback and the readers can all import it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from spa.metrics import EXTRA_METRIC_NAMES, METRIC_NAMES

__all__ = [
    "DEFAULT_TRACKING_URI",
    "PARENT_TAG",
    "FINAL_STEP",
    "PROJECTED_LEARNED_PARAMS",
    "TRIAL_NUMBER",
    "STUDY_KEYS",
    "MODES",
    "OBJECTIVE_METRICS",
    "Objective",
    "DEFAULT_OBJECTIVES",
    "trial_name",
    "trial_dirname",
]

# The MLflow store of a study when neither a flag nor $MLFLOW_TRACKING_URI names one.
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
# MLflow's tag that makes a run the child of another: a trial's run points at its study's parent run.
PARENT_TAG = "mlflow.parentRunId"
# Reported by the trainable with every step: the index of the trial's last pruning step. A trial that stopped before
# it (an early-stopping scheduler) has no final values.
FINAL_STEP = "final_step"
# Reported by the trainable with every step: its learned_params projected to the schedule's final density
# (``spa.counting.projected_learned_parameters``), the cost axis the trial will end on; what moasha ranks at its rungs.
PROJECTED_LEARNED_PARAMS = "projected_learned_params"
# Added to every trial's config by the driver (the Optuna trial number); not an experiment setting.
TRIAL_NUMBER = "trial_number"
STUDY_KEYS = (TRIAL_NUMBER,)

# An objective is maximised or minimised.
MODES = ("max", "min")
# What a trial reports after every pruning step, so what an objective may be: spa's metrics, the schedule's target
# next to the density it aims at.
OBJECTIVE_METRICS = (*METRIC_NAMES[:2], EXTRA_METRIC_NAMES[0], *METRIC_NAMES[2:], EXTRA_METRIC_NAMES[1])


@dataclass(frozen=True)
class Objective:
    metric: str
    mode: str  # one of MODES

    @property
    def direction(self) -> str:
        """Optuna's word for the mode."""
        return "maximize" if self.mode == "max" else "minimize"

    def __str__(self) -> str:
        return f"{self.metric}:{self.mode}"


# The trade-off a study explores unless its space says otherwise: accuracy on the validation split (never the test
# split) against the parameters learned.
DEFAULT_OBJECTIVES = (Objective("val_accuracy", "max"), Objective("learned_params", "min"))


def trial_name(trial: Any) -> str:
    """``trial-<Optuna trial number>``, the name of the trial's MLflow run too."""
    number = trial.config.get(TRIAL_NUMBER)
    return f"trial-{number:03d}" if isinstance(number, int) else f"trial-{trial.trial_id}"


def trial_dirname(trial: Any) -> str:
    """Short, unique trial directory names (Tune's default repeats every setting in the name)."""
    return f"{trial_name(trial)}_{trial.trial_id}"
