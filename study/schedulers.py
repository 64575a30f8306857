"""The trial schedulers a study may use, by name: which trials Tune lets run on and which it stops early, what each
favours (the ``--scheduler`` help) and how each is built. Ray is imported only when a scheduler is built, so the
command can check ``--scheduler`` without it.

- ``fifo`` runs every trial to its final pruning step.
- ``asha`` is Ray's ASHA on the first objective alone (``val_accuracy``) at pruning steps 1, 2, 4, ...: it compares
  trials at equal step, not equal density, and ignores the second objective, so it favours accurate, gently pruned
  schedules and stops the aggressive, few-parameter ones first (the cheap end of the front). Kept for single-objective
  spaces and for studies begun with it; its rung records are not kept across ``--resume`` (Ray does not save a
  scheduler with the experiment state).
- ``moasha`` (``study.moasha``) judges the whole objective vector at pruning steps 0 (trained, unpruned), 1, 2, 4,
  ..., with learned params projected to the trial's final density, and stops a trial when a finished trial's final
  point is no worse in every objective (rule ``dominated``); its records survive ``--resume`` (a journal in the study
  directory).
- ``moasha-halving`` is the same scheduler with Schmucker et al.'s rule (``halving``): it stops trials outside the top
  ``1/reduction_factor`` of their rung by non-dominated sorting. Measured below fifo at equal compute on the embedded
  task (issue 12, benchmarks/README.md), so it is not the default moasha; kept for larger budgets, where stopping
  half the trials early may pay.

Every stopped trial ends without error before its final step, so ``study.outcome.judge`` calls it PRUNED: Optuna is
told PRUNED (``study.searcher``), MLflow records it KILLED with ``stopped_by`` (``study.tracking``), and it never
enters a front.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from study.names import FINAL_STEP, PROJECTED_LEARNED_PARAMS

if TYPE_CHECKING:
    from ray.tune.schedulers import TrialScheduler

__all__ = [
    "SCHEDULERS",
    "SCHEDULER_HELP",
    "REDUCTION_FACTOR",
    "MOASHA_RULE",
    "MOASHA_RULES",
    "RUNG_METRICS",
    "MOASHA_JOURNAL",
    "STOPPING",
    "make_scheduler",
]

SCHEDULERS = ("fifo", "asha", "moasha", "moasha-halving")
# The schedulers that stop trials at pruning steps (they need a space that prunes).
STOPPING = ("asha", "moasha", "moasha-halving")
REDUCTION_FACTOR = 2
MOASHA_RULE = "dominated"  # study.moasha.RULES; why this one: study.moasha
# The rule of each MOASHA-family scheduler name.
MOASHA_RULES = {"moasha": MOASHA_RULE, "moasha-halving": "halving"}
# What moasha reads an objective from at a rung, where it differs: learned params projected to the trial's final
# density (the trainable reports it), so every trial is judged on the cost axis it will end on.
RUNG_METRICS = {"learned_params": PROJECTED_LEARNED_PARAMS}
MOASHA_JOURNAL = "moasha_rungs.jsonl"  # in the study directory
SCHEDULER_HELP = (
    "fifo runs every trial to its final pruning step; "
    "moasha stops a trial at pruning steps 0 (trained, unpruned), 1, 2, 4, ... when a finished trial is no worse in "
    "every objective than it (learned params projected to its final density); "
    "moasha-halving stops those outside the top half there by non-dominated sorting (MOASHA's rule; below fifo at "
    "equal compute on the embedded task); "
    "asha stops trials whose first objective (val_accuracy) alone lags at equal step, so it stops aggressive, "
    "few-parameter schedules first; stopped trials are recorded as pruned, never on the front (default: fifo)"
)


def make_scheduler(
    name: str,
    *,
    metrics: Sequence[str],
    modes: Sequence[str],
    max_t: int,
    study_dir: str | os.PathLike[str],
    grace_period: int | None = None,
    reduction_factor: float = REDUCTION_FACTOR,
) -> TrialScheduler:
    """Scheduler ``name`` over pruning steps (``step``) up to ``max_t``, the largest final step of the space; the
    first rung (``grace_period``) by default at step 1 for asha (Ray's needs one >= 1) and at step 0 for moasha
    (why: ``study.moasha``)."""
    # Ray loads here, not on import: the command checks its input before it loads Ray.
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from study.moasha import MOASHAScheduler

    if name not in SCHEDULERS:
        raise ValueError(f"scheduler={name!r} is not allowed; allowed: {', '.join(SCHEDULERS)}")
    if name == "fifo":
        return FIFOScheduler()
    if grace_period is None:
        grace_period = 1 if name == "asha" else 0
    if max_t < max(grace_period, 1):  # a space that prunes, as far as the first rung
        raise ValueError(f"scheduler {name} stops trials at pruning steps, but {max_t=} < {max(grace_period, 1)}")
    if name == "asha":
        return ASHAScheduler(
            time_attr="step",
            metric=metrics[0],
            mode=modes[0],
            max_t=max_t,
            grace_period=grace_period,
            reduction_factor=reduction_factor,
        )
    return MOASHAScheduler(
        metrics=metrics,
        modes=modes,
        max_t=max_t,
        time_attr="step",
        grace_period=grace_period,
        reduction_factor=reduction_factor,
        final_attr=FINAL_STEP,
        rung_metrics=[RUNG_METRICS.get(metric, metric) for metric in metrics],
        rule=MOASHA_RULES[name],
        journal=os.path.join(study_dir, MOASHA_JOURNAL),
    )
