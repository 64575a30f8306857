"""Multi-objective asynchronous successive halving (MOASHA) as a Ray Tune scheduler.

Ray's ASHA compares one metric at each rung: here ``val_accuracy`` alone at pruning step k. But step k is a different
density for each schedule, and accuracy alone ignores the second objective, so ASHA stops the aggressive,
few-parameter schedules first: the cheap end of the front. MOASHA (Schmucker et al., "Multi-objective Asynchronous
Successive Halving", https://arxiv.org/abs/2106.12639) ranks a trial's whole objective vector instead. This
scheduler keeps MOASHA's rungs and its whole-vector comparison; its halving is one of two rules a rung may use, and
the study uses the other, which stops only trials a finished one dominates (below: why).

Rungs sit at ``grace_period * reduction_factor**k`` (k = 0, 1, ...) up to ``max_t``, in the time attribute (the
trial's reported pruning ``step``); ``grace_period=0`` (the default) puts the first rung at step 0, the trained,
unpruned network, followed by those of grace period 1 (steps 0, 1, 2, 4, ...): in this project a trial spends most of
its compute before its first pruning step, so a later first rung saves little. A trial is judged once per rung, at its
first result at or past it (a trial that skips rungs is judged at the highest one it passed, as Ray's ASHA does).

What a rung compares: the trial's objective vector, each objective read from its ``rung_metrics`` entry where the
result has one. The study reads ``learned_params`` as ``projected_learned_params``, the count projected to the trial's
final density (``spa.counting.projected_learned_parameters``): at step 0 every trial is unpruned, so trials of one
rank have the same cost there whatever density they are headed for, and a rung would rank the ones that end cheap
(the front's valuable end) as if they were expensive. Projected from step 0, the count was within -10 % to +4 % of
the final one on 93 recorded trials.

How a rung decides (``rule``, one of ``RULES``):

- ``halving``, Schmucker et al.'s: the trial's vector joins those recorded at the rung (every trial that reached it,
  stopped or not) and all are ranked (``rung_order``): by non-dominated sorting (front 0 = not dominated by any
  other), then within a front by crowding distance, larger first (NSGA-II's: the extremes of a front are infinitely
  far). The trial continues when fewer than ``ceil(n / reduction_factor)`` of the n recorded trials rank strictly
  ahead of it; ties go to the newcomer, as in Ray's ASHA. So the first trial at a rung always continues, and a trial
  dominated by ``ceil(n / reduction_factor)`` others is always stopped.
- ``dominated`` (the study's, ``study.schedulers.MOASHA_RULE``): the trial stops when the final point of a trial that
  already finished is no worse in every objective (``dominated_by``). Its accuracy at a rung is, pruning being still
  ahead, about the best it will end with, and its projected cost about what it will end with, so a trial stopped this
  way would almost surely end off the front: it stops only sure losers, and as many as it finds.

A NaN objective counts as the worst value. A trial at its own final step (``final_attr`` >= time) is recorded, as a
rung record and as a final point, but never stopped: it is done anyway.

Why not halving (issue 12; benchmarks/README.md, search-quality section). Fronts are built from finished trials only,
and at ``benchmarks/search_quality.py --medium``'s budget a trial's step 0 costs a fifth to a third of it: halving
stops half the trials at every rung, so a study finishes fewer of them inside fifo's compute, and the picks are not
good enough to make up for it. Replayed over the recorded fifo trials at equal compute (24 on the geometric-only space
/ 48 on the space before it, orders of 8): halving at rungs 0, 1, 2, 4 0.905 / 0.972 of fifo's hypervolume, with the
projection 0.929 / 0.951; no rung set or reduction factor above 0.995; ``dominated`` 1.012 / 1.013; an oracle that
knows every final point and stops at step 0 exactly the trials a finished one dominates 1.031 / 1.031, the most any
rule stopping at step 0 could reach here. Without the projection ``dominated`` replays 0.950 / 0.951. Live, six
seeds of ``--medium --moasha-only``: 1.026 of fifo's hypervolume (per-seed spread 0.070), where halving had 0.963.

Where ``dominated`` can err: a finished trial that breaks a constraint still counts (the scheduler does not see the
space's constraints), and accuracy can rise a little in recovery after a rung.

Resuming: Ray 2.60 does not save a scheduler with the experiment state (``TuneController.__getstate__`` leaves out
``_scheduler_alg``; the scheduler comes back as ``tuner.pkl`` pickled it when the study began, with empty rungs).
So every rung record and final point is also appended to ``journal`` (one JSON line each, flushed), and a scheduler
with empty rungs replays it before its first decision. Pickling (and Tune's ``save``/``restore``) keeps the records too.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from study.names import MODES
from study.pareto import pareto_mask

__all__ = [
    "MOASHAScheduler",
    "RULES",
    "rung_order",
    "rung_milestones",
    "nondominated_fronts",
    "crowding_distances",
    "survives",
    "dominated_by",
]

# How a rung decides (see the module docstring): successive halving, or a stop only when a finished trial dominates.
RULES = ("halving", "dominated")

logger = logging.getLogger(__name__)


# --- the ranking: plain data in, plain data out --------------------------------------------------------------------


def rung_milestones(grace_period: float, reduction_factor: float, max_t: float) -> list[float]:
    """``grace_period * reduction_factor**k`` for k = 0, 1, ... while at most ``max_t``; for ``grace_period=0``,
    0 and then those of grace period 1."""
    if not (grace_period >= 0 and reduction_factor > 1 and max_t >= grace_period):
        raise ValueError(
            f"need 0 <= grace_period <= max_t and reduction_factor > 1: {grace_period=}, {max_t=}, {reduction_factor=}"
        )
    if grace_period == 0:
        return [0.0, *(rung_milestones(1, reduction_factor, max_t) if max_t >= 1 else [])]
    milestones, milestone = [], float(grace_period)
    while milestone <= max_t:
        milestones.append(milestone)
        milestone *= reduction_factor
    return milestones


def _as_losses(values: Sequence[Sequence[float]]) -> np.ndarray:
    """Objective vectors already turned into losses (all minimised), NaN as the worst value (+inf)."""
    losses = np.asarray(values, dtype=float).reshape(len(values), -1)
    return np.where(np.isnan(losses), np.inf, losses)


def nondominated_fronts(losses: Sequence[Sequence[float]]) -> np.ndarray:
    """The front index of each row of losses (all minimised): 0 = dominated by no row, 1 = only by rows of front 0..."""
    losses = _as_losses(losses)
    fronts = np.full(len(losses), -1)
    remaining = np.arange(len(losses))
    modes = ["min"] * losses.shape[1]
    front = 0
    while remaining.size:
        on_front = np.asarray(pareto_mask(losses[remaining], modes), dtype=bool)
        if not on_front.any():  # only rows that compare with nothing (cannot happen without NaN): one last front
            on_front[:] = True
        fronts[remaining[on_front]] = front
        remaining = remaining[~on_front]
        front += 1
    return fronts


def crowding_distances(losses: Sequence[Sequence[float]]) -> np.ndarray:
    """NSGA-II's crowding distance of each row within its set: per objective, the gap between its two neighbours in
    sorted order over the objective's range; the extremes of each objective get infinity."""
    losses = _as_losses(losses)
    n, m = losses.shape
    distance = np.zeros(n)
    if n <= 2:
        return np.full(n, np.inf)
    for k in range(m):
        order = np.argsort(losses[:, k], kind="stable")
        column = losses[order, k]
        distance[order[0]] = distance[order[-1]] = np.inf
        span = column[-1] - column[0]
        if not np.isfinite(span) or span == 0:
            continue
        distance[order[1:-1]] += (column[2:] - column[:-2]) / span
    return distance


def rung_order(losses: Sequence[Sequence[float]]) -> tuple[np.ndarray, np.ndarray]:
    """(front index, crowding distance within the front) of each row: a row ranks ahead of another when its front
    is lower, or the front is the same and its crowding distance larger."""
    losses = _as_losses(losses)
    fronts = nondominated_fronts(losses)
    crowding = np.zeros(len(losses))
    for front in np.unique(fronts):
        members = np.flatnonzero(fronts == front)
        crowding[members] = crowding_distances(losses[members])
    return fronts, crowding


def survives(losses: Sequence[Sequence[float]], index: int, reduction_factor: float) -> bool:
    """Whether row ``index`` of a rung's losses is in the top ``1 / reduction_factor``: fewer than
    ``ceil(n / reduction_factor)`` rows rank strictly ahead of it (see ``rung_order``; ties go to it)."""
    fronts, crowding = rung_order(losses)
    ahead = (fronts < fronts[index]) | ((fronts == fronts[index]) & (crowding > crowding[index]))
    return int(ahead.sum()) < math.ceil(len(fronts) / reduction_factor)


def dominated_by(finals: Sequence[Sequence[float]], losses: Sequence[float]) -> bool:
    """Whether some row of ``finals`` is no worse than ``losses`` in every objective (all minimised; NaN worst)."""
    if not len(finals):
        return False
    return bool((_as_losses(finals) <= _as_losses([losses])).all(axis=1).any())


# --- the scheduler -------------------------------------------------------------------------------------------------


class MOASHAScheduler(FIFOScheduler):
    """Stops trials at rungs by ``rule``: outside the top ``1/reduction_factor`` by non-dominated sorting (halving), or
    dominated by a finished trial's final point (dominated); see the module docstring for the rules and for how the
    records survive a driver resume."""

    def __init__(
        self,
        *,
        metrics: Sequence[str],
        modes: Sequence[str],
        max_t: float,
        time_attr: str = "step",
        grace_period: float = 0,
        reduction_factor: float = 2,
        final_attr: str | None = None,
        rung_metrics: Sequence[str] | None = None,
        rule: str = "halving",
        journal: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__()
        if len(metrics) != len(modes) or not metrics:
            raise ValueError(f"one mode per metric is needed: {list(metrics)=} and {list(modes)=}")
        if rung_metrics is not None and len(rung_metrics) != len(metrics):
            raise ValueError(f"one rung metric per metric is needed: {list(metrics)=} and {list(rung_metrics)=}")
        if rule not in RULES:
            raise ValueError(f"rule={rule!r}; allowed: {', '.join(RULES)}")
        bad = [mode for mode in modes if mode not in MODES]
        if bad:
            raise ValueError(f"modes={list(modes)!r} hold {bad!r}; allowed: {', '.join(MODES)}")
        self.metrics = list(metrics)
        self.modes = list(modes)
        self.rung_metrics = list(rung_metrics or metrics)
        self.rule = rule
        self._metric = self.metrics[0]  # Tune's strict metric check looks for this one key in every result
        self.time_attr = time_attr
        self.reduction_factor = float(reduction_factor)
        self.milestones = rung_milestones(grace_period, reduction_factor, max_t)
        self.final_attr = final_attr
        self.journal = None if journal is None else str(journal)
        self._signs = [-1.0 if mode == "max" else 1.0 for mode in self.modes]
        # milestone -> {trial_id: losses}, in the order trials reached the rung
        self.rungs: dict[float, dict[str, list[float]]] = {milestone: {} for milestone in self.milestones}
        self.finals: dict[str, list[float]] = {}  # trial_id -> losses at its final step
        self.num_stopped = 0
        self._replayed = False

    # --- Tune's hooks -------------------------------------------------------------------------------------------

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        return True  # the metrics and modes come from the space, given at construction

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict) -> str:
        return self.decide(trial.trial_id, result)

    def on_trial_complete(self, tune_controller: Any, trial: Trial, result: dict) -> None:
        if result:
            self.decide(trial.trial_id, result)  # recorded at a rung it reached with its last result, if any

    def debug_string(self) -> str:
        rungs = ", ".join(f"{milestone:g}: {len(recorded)}" for milestone, recorded in self.rungs.items())
        return f"MOASHA ({self.rule}): {self.num_stopped} stopped; trials recorded per rung {{{rungs}}}"

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as file:
            pickle.dump(self.__dict__, file)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as file:
            self.__dict__.update(pickle.load(file))

    # --- the decision -------------------------------------------------------------------------------------------

    def decide(self, trial_id: str, result: Mapping[str, Any]) -> str:
        """CONTINUE or STOP for a trial's result, recording it at the rung it reached (plain data, for tests)."""
        self._replay()
        time = result.get(self.time_attr)
        if not isinstance(time, (int, float)) or any(metric not in result for metric in self.metrics):
            return TrialScheduler.CONTINUE
        final = result.get(self.final_attr) if self.final_attr else None
        at_end = isinstance(final, (int, float)) and final <= time  # the trial ends anyway, with these values
        if at_end and trial_id not in self.finals:
            self.finals[trial_id] = self._losses(result, self.metrics)
            self._write({"final": True, "trial_id": trial_id, "losses": self.finals[trial_id]})
        rung = self._rung_to_judge(trial_id, float(time))
        if rung is None:
            return TrialScheduler.CONTINUE
        # At a rung, each objective is read from its rung metric where the result has one (the projection of
        # learned_params to the trial's final density: the cost axis it will end on).
        names = [
            name if name in result else metric for name, metric in zip(self.rung_metrics, self.metrics, strict=True)
        ]
        losses = self._losses(result, names)
        recorded = self.rungs[rung]
        recorded[trial_id] = losses
        if self.rule == "halving":
            keep = survives(list(recorded.values()), len(recorded) - 1, self.reduction_factor)
        else:
            keep = not dominated_by([values for other, values in self.finals.items() if other != trial_id], losses)
        keep = keep or at_end
        self._write({"rung": rung, "trial_id": trial_id, "losses": losses, "continued": keep})
        if keep:
            return TrialScheduler.CONTINUE
        self.num_stopped += 1
        logger.info("MOASHA stops trial %s at rung %g (%d recorded there)", trial_id, rung, len(recorded))
        return TrialScheduler.STOP

    def _losses(self, result: Mapping[str, Any], names: Sequence[str]) -> list[float]:
        return [_number(result[name]) * sign for name, sign in zip(names, self._signs, strict=True)]

    def _rung_to_judge(self, trial_id: str, time: float) -> float | None:
        """The highest rung at or below ``time``, if the trial has not been recorded there yet."""
        for milestone in reversed(self.milestones):
            if time >= milestone:
                return None if trial_id in self.rungs[milestone] else milestone
        return None

    # --- the journal --------------------------------------------------------------------------------------------

    def _write(self, record: dict[str, Any]) -> None:
        if self.journal is None:
            return
        path = Path(self.journal)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as file:  # one line per record: an interrupted write loses at most that line
            file.write(json.dumps(record) + "\n")

    def _replay(self) -> None:
        if self._replayed:
            return
        self._replayed = True
        if self.journal is None or not Path(self.journal).is_file() or any(self.rungs.values()) or self.finals:
            return
        for number, line in enumerate(Path(self.journal).read_text().splitlines(), 1):
            try:
                record = json.loads(line)
                trial_id = str(record["trial_id"])
                losses = [float(value) for value in record["losses"]]
                rung = None if record.get("final") else float(record["rung"])
            except (ValueError, KeyError, TypeError):
                logger.warning("MOASHA journal %s: line %d unreadable, skipped", self.journal, number)
                continue
            if rung is None:
                self.finals.setdefault(trial_id, losses)
            elif rung in self.rungs:
                self.rungs[rung].setdefault(trial_id, losses)
                if not record.get("continued", True):
                    self.num_stopped += 1


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan
