"""The study's search algorithm: Ray's ``OptunaSearch`` over a space file, telling Optuna what really happened.

Ray 2.60's ``OptunaSearch`` tells Optuna COMPLETE for any trial that ends without error, so a trial that ASHA
stopped early enters a multi-objective study (and its front) with values that are not final; and it only logs a
warning when Optuna refuses a NaN value, leaving the trial RUNNING forever. ``StudySearcher`` judges each trial
once (``study.outcome.judge``) and tells COMPLETE, PRUNED or FAIL accordingly, with the reason as a user
attribute. The Optuna study lives in a storage (an SQLite file in the study directory), so it is kept across a
resume; ``StudySearch`` lets a resumed study ask for more samples than it started with. A resumed study's Optuna
trials that Tune's restored state lacks (asked after Tune last saved it) are asked again if unfinished, and count as
asked if finished, so the study ends with the trials an uninterrupted one has. A space's start points
(``study.start_points``) are enqueued into a new study only, so they are asked first, once.

What the samplers learn from a stopped (PRUNED) trial, in Optuna 5.0 (read in its source, issue 12): TPE counts it
towards ``n_startup_trials`` and, in a multi-objective study, puts it in its "above" (not good) group once
``ceil(n / 10)`` trials have completed (it fills the good group from completed trials first, then from pruned ones
ranked by intermediate values, which a multi-objective study never has: ``Trial.report`` takes one objective); GP
counts COMPLETE trials only. So TPE learns from a stop only that the trial did not rank among the best, the verdict
the scheduler gave. Telling it the trial's last objective vector instead would need COMPLETE, which would put the
trial on Optuna's front.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState
from ray.tune.search import ConcurrencyLimiter, SearchGenerator
from ray.tune.search.optuna import OptunaSearch

from spa.validation import is_finite_number
from study.constraints import CONSTRAINTS_ATTR, UNPRUNED_VAL_ACCURACY, VIOLATION, Constraints
from study.names import TRIAL_NUMBER
from study.outcome import COMPLETE, FAILED, PRUNED, judge
from study.ray_internals import optuna_study, optuna_trials, raise_total_samples, told_trial_ids
from study.sampler_plan import SAMPLER_NAMES, SamplerPlan, build_sampler, plan_sampler
from study.spaces import SearchSpace, suggest

__all__ = ["SAMPLERS", "DefineByRun", "StudySearcher", "StudySearch", "make_sampler", "REASON_ATTRS", "last_values"]

logger = logging.getLogger(__name__)

# Optuna's own defaults, by name; a plan (study.sampler_plan) sizes them to the budget instead.
SAMPLERS: dict[str, Callable[[int], optuna.samplers.BaseSampler]] = {
    name: (lambda seed, name=name: build_sampler(SamplerPlan(name), seed)) for name in SAMPLER_NAMES
}
_STATES = {COMPLETE: TrialState.COMPLETE, PRUNED: TrialState.PRUNED, FAILED: TrialState.FAIL}
# The user attribute of an Optuna trial that says why it is not COMPLETE.
REASON_ATTRS = {PRUNED: "pruned_because", FAILED: "failed_because"}
TUNE_TRIAL_ATTR = "tune_trial_id"


def make_sampler(
    name: str,
    seed: int,
    *,
    num_samples: int | None = None,
    num_params: int | None = None,
    max_concurrent: int = 1,
) -> optuna.samplers.BaseSampler:
    """Sampler ``name``, seeded: sized to the budget (``study.sampler_plan.plan_sampler``) when ``num_samples`` is
    given, else with Optuna's defaults."""
    if name not in SAMPLERS:
        raise ValueError(f"sampler={name!r} is not allowed; allowed: {', '.join(SAMPLERS)}")
    if num_samples is None:
        return SAMPLERS[name](seed)
    plan = plan_sampler(name, num_samples=num_samples, num_params=num_params, max_concurrent=max_concurrent)
    return build_sampler(plan, seed)


class DefineByRun:
    """The define-by-run function of a space (a class, not a closure, so the searcher pickles): the trial's flat
    config is the space's fixed settings, its sampled settings, and the Optuna trial number."""

    def __init__(self, space: SearchSpace) -> None:
        self.space = space

    def __call__(self, trial: optuna.Trial) -> dict[str, Any]:
        return {**suggest(self.space, trial), TRIAL_NUMBER: trial.number}


class StudySearcher(OptunaSearch):
    """``OptunaSearch`` that tells Optuna PRUNED for early-stopped trials and FAIL for errors and NaN objectives."""

    def __init__(
        self,
        space: SearchSpace,
        *,
        sampler: optuna.samplers.BaseSampler,
        storage: optuna.storages.BaseStorage,
        study_name: str,
    ) -> None:
        super().__init__(
            space=DefineByRun(space),
            metric=space.metrics,
            mode=space.modes,
            # Enqueued (Study.enqueue_trial) by Ray each time a searcher is built: on a new study only, so a searcher
            # built again over a resumed study's storage never enqueues them twice. (Tune's own resume unpickles the
            # searcher, which builds nothing.)
            points_to_evaluate=[dict(point) for point in space.start_points] if _is_new(storage, study_name) else None,
            sampler=sampler,
            study_name=study_name,
            storage=storage,
        )
        self._constraints = space.constraints
        self._lost_unfinished: list[int] = []  # numbers of Optuna trials Tune lost, to be asked again (restore)
        self.lost_finished = 0  # finished Optuna trials Tune lost, found by this restore
        self._lost_counted: set[int] = set()  # their numbers, over every restore (pickled with the searcher)

    @property
    def study(self) -> optuna.Study:
        return optuna_study(self)

    @property
    def constraints(self) -> Constraints:
        return getattr(self, "_constraints", None) or Constraints()  # a searcher pickled before constraints existed

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        # Step 0 (trained, unpruned) is what a relative accuracy floor is a fraction of: kept in the Optuna storage,
        # so a resumed driver still knows it.
        if result.get("step") == 0 and is_finite_number(result.get("val_accuracy")):
            ot_trial = optuna_trials(self).get(trial_id)
            if ot_trial is not None:
                ot_trial.set_user_attr(UNPRUNED_VAL_ACCURACY, float(result["val_accuracy"]))
        super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        if trial_id in told_trial_ids(self):
            return
        ot_trial = optuna_trials(self).get(trial_id)
        if ot_trial is None:
            logger.warning("trial %s ended but was never asked of Optuna; nothing to tell", trial_id)
            return
        outcome = judge(result, self.metric, error=error)
        attrs = last_values(result, self.metric) if outcome.state == PRUNED else {}
        if result and outcome.state in (COMPLETE, PRUNED) and self.constraints.declared():
            attrs.update(self._constraint_attrs(ot_trial.number, result))
        try:
            self._tell(ot_trial.number, outcome.state, outcome.values, outcome.reason, attrs)
        except Exception as exc:  # bookkeeping must never end the study; say so loudly instead
            logger.error("could not tell Optuna trial %d (%s): %s", ot_trial.number, outcome.state, exc)
        told_trial_ids(self).add(trial_id)

    def _constraint_attrs(self, number: int, result: dict[str, Any]) -> dict[str, Any]:
        """The constraint values of a trial (told to Optuna by set_constraint) and, when it breaks one,
        the reason."""
        unpruned = self.study.get_trials(deepcopy=False)[number].user_attrs.get(UNPRUNED_VAL_ACCURACY)
        attrs: dict[str, Any] = {CONSTRAINTS_ATTR: dict(self.constraints.named_values(result, unpruned))}
        violation = self.constraints.violation(result, unpruned)
        if violation:
            attrs[VIOLATION] = violation
        return attrs

    def restore(self, checkpoint_path: str) -> None:
        super().restore(checkpoint_path)
        # The Optuna study (restored from a snapshot, study.snapshots) can hold trials asked after the experiment
        # state Tune restored from: Tune lost them. An unfinished one is asked again, first (it runs from the start,
        # under a new Tune trial); a finished one counts as asked (StudySearch), so the study keeps its size.
        counted = set(getattr(self, "_lost_counted", ()))  # lost finished trials an earlier resume counted
        known = {ot_trial.number for ot_trial in optuna_trials(self).values()} | counted
        lost = [frozen for frozen in self.study.get_trials(deepcopy=False) if frozen.number not in known]
        self._lost_unfinished = [frozen.number for frozen in lost if frozen.state == TrialState.RUNNING]
        finished = {frozen.number for frozen in lost if frozen.state.is_finished()}
        self.lost_finished, self._lost_counted = len(finished), counted | finished
        if lost:
            logger.warning(
                "Optuna trials asked after Tune's last saved state (the driver stopped): %s asked again, %s counted",
                self._lost_unfinished or "none",
                sorted(finished) or "none",
            )

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        if trial_id not in optuna_trials(self) and getattr(self, "_lost_unfinished", None):
            # The lost trial again: its parameters are already in its Optuna trial, which suggests them again.
            frozen = self.study.get_trials(deepcopy=False)[self._lost_unfinished.pop(0)]
            optuna_trials(self)[trial_id] = optuna.Trial(self.study, frozen._trial_id)
        config = super().suggest(trial_id)
        if config:
            optuna_trials(self)[trial_id].set_user_attr(TUNE_TRIAL_ATTR, trial_id)
        return config

    def _tell(
        self,
        number: int,
        state: str,
        values: tuple[float, ...] | None,
        reason: str | None,
        attrs: dict[str, float] | None = None,
    ) -> None:
        frozen = self.study.get_trials(deepcopy=False)[number]
        if frozen.state.is_finished():  # told before the driver stopped; the storage already holds the truth
            return
        trial = optuna.trial.Trial(self.study, frozen._trial_id)
        try:
            for key, value in {**({REASON_ATTRS[state]: reason} if reason else {}), **(attrs or {})}.items():
                trial.set_user_attr(key, value)
            # Optuna 5's constraint mechanism (constraints_func is deprecated there): the samplers read these.
            for key, value in (attrs or {}).get(CONSTRAINTS_ATTR, {}).items():
                trial.set_constraint(key, value)
        except UpdateFinishedTrialError:
            return
        self.study.tell(number, list(values) if values else None, state=_STATES[state], skip_if_finished=True)


def _is_new(storage: optuna.storages.BaseStorage, study_name: str) -> bool:
    """No study ``study_name`` in ``storage`` yet, or one without trials (none asked, none enqueued)."""
    try:
        study_id = storage.get_study_id_from_name(study_name)
    except KeyError:
        return True
    return not storage.get_all_trials(study_id, deepcopy=False)


def last_values(result: dict[str, Any] | None, metrics: list[str]) -> dict[str, float]:
    """``last_step`` and ``last_<metric>`` of a trial's last result, finite numbers only: what a trial stopped early
    had reached, kept as user attributes since its values are not final and never enter the front."""
    if not result:
        return {}
    attrs = {f"last_{key}": float(result[key]) for key in ("step", *metrics) if is_finite_number(result.get(key))}
    return attrs


class StudySearch(SearchGenerator):
    """Tune's ``SearchGenerator`` over ``ConcurrencyLimiter(StudySearcher)``; ``num_samples`` raised before a
    resumed run starts (Tune restores the sample count of the first run) lets the study ask for more trials."""

    def __init__(self, searcher: StudySearcher, *, max_concurrent: int, num_samples: int) -> None:
        super().__init__(ConcurrencyLimiter(searcher, max_concurrent=max_concurrent))
        self.num_samples = num_samples

    @property
    def study_searcher(self) -> StudySearcher:
        return self.searcher.searcher

    def set_state(self, state: dict) -> None:
        # Tune restores the searcher first: finished Optuna trials Tune lost count as asked.
        super().set_state({**state, "counter": state["counter"] + self.study_searcher.lost_finished})
        raise_total_samples(self, self.num_samples)
