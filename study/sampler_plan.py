"""The sampler's settings sized to the study's budget: a pure function of (sampler, trials, parameters, concurrency).
No Optuna until a sampler is built, so the command checks ``--sampler`` without it.

Optuna's defaults suit long studies: ``TPESampler`` samples at random until ``n_startup_trials=10`` trials have
*finished* (COMPLETE or PRUNED), ``GPSampler`` until 10 have COMPLETED, and ``NSGAIISampler`` breeds generations of
``population_size=50``. An 8-trial study with TPE is then pure random search, and a 64-trial NSGA-II study about one
generation. The rules here (each setting's reason travels with the plan, for the study header and the parent run):

- ``tpe``: about a third of the budget random, then TPE. Trials run ``max_concurrent`` at a time and the startup count
  is of *finished* trials, so about ``n_startup_trials + max_concurrent - 1`` trials are drawn at random; the plan
  subtracts the overlap. At least 2 (TPE splits the finished trials into a good and a bad group), at most
  ``11 * params - 1``, the MOTPE paper's recommendation for large budgets (Ozaki et al. 2020, quoted in Optuna's
  ``MOTPESampler`` docs), or Optuna's 10 when the number of parameters is not given.
- ``nsga2``: a population of a quarter of the budget (at least 4 generations), at least 4 (crossover needs two
  parents, and selection some choice) and at most Optuna's 50; never more than the budget.
- ``gp``: Optuna's ``GPSampler`` (multi-objective through log expected hypervolume improvement; needs torch and
  scipy, both dependencies here). A quarter of the budget random, less the concurrency overlap, at least 2, at most
  Optuna's 10. It counts COMPLETE trials only (pruned ones teach it nothing), and parameters that exist only in some
  trials (conditional ones, e.g. ``rank`` when the learner is searched) are sampled at random.
- ``random``: no settings.

A space's start points (``study.start_points``) are the study's first trials, and a sampler learns from them like
from any trial: they count towards TPE's and GP's startup trials (they spread the first observations by design, as
the random ones do by chance, here over the ends of the front), so the startup counts stay sized to the budget and
fewer trials are drawn at random; NSGA-II's first generation holds them. The plan's line says so.

Under a scheduler that stops trials by successive halving (``moasha``, ``asha``: ``reduction_factor``), a trial costs
less than a full one, so the startup counts are sized to the compute, ``num_samples / reduction_factor`` full trials,
not to the number of trials: the first trials of such a study are seldom stopped (a rung with few records stops few),
so a third of its trials random would be more than a third of its compute. Measured in
``benchmarks/search_quality.py --medium`` (issue 12): 16 moasha trials spent the epochs of 8 fifo trials, and with
TPE sized to 16 trials (5 startup) its first 6, random, trials took 16 of its 32 epochs, against 13 of 33 under fifo.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna

__all__ = ["SAMPLER_NAMES", "SamplerPlan", "plan_sampler", "build_sampler"]

SAMPLER_NAMES = ("tpe", "nsga2", "gp", "random")
_OPTUNA_STARTUP = 10  # TPESampler's and GPSampler's default n_startup_trials
_OPTUNA_POPULATION = 50  # NSGAIISampler's default population_size


@dataclass(frozen=True)
class SamplerPlan:
    """A sampler and its settings (keyword arguments of its Optuna class), with one line saying why."""

    name: str
    settings: dict[str, Any] = field(default_factory=dict)
    reason: str = ""

    def params(self) -> dict[str, Any]:
        """Flat ``sampler`` and ``sampler_<setting>`` entries, for the parent run's params and the study header."""
        return {"sampler": self.name, **{f"sampler_{key}": value for key, value in self.settings.items()}}

    def header(self) -> str:
        settings = ", ".join(f"{key}={value}" for key, value in self.settings.items())
        return f"{self.name}({settings}): {self.reason}" if settings else f"{self.name}: {self.reason}"


def plan_sampler(
    name: str,
    *,
    num_samples: int,
    num_params: int | None = None,
    max_concurrent: int = 1,
    reduction_factor: float | None = None,
    start_points: int = 0,
) -> SamplerPlan:
    """The settings of sampler ``name`` for a study of ``num_samples`` trials over ``num_params`` searched
    parameters, ``max_concurrent`` at a time, stopped by successive halving at ``reduction_factor`` (None: run to
    their end), whose first ``start_points`` trials are the space's start points; see the module docstring for the
    rules."""
    if name not in SAMPLER_NAMES:
        raise ValueError(f"sampler={name!r} is not allowed; allowed: {', '.join(SAMPLER_NAMES)}")
    if num_samples < 1 or max_concurrent < 1 or (num_params is not None and num_params < 1) or start_points < 0:
        raise ValueError(f"need positive sizes: {num_samples=}, {num_params=}, {max_concurrent=}, {start_points=}")
    if reduction_factor is not None and not reduction_factor > 1:
        raise ValueError(f"{reduction_factor=}: allowed: None or a number > 1")
    overlap = min(max_concurrent, num_samples) - 1  # trials asked before the first one finishes
    full = num_samples / reduction_factor if reduction_factor else num_samples  # the compute, in full trials
    sized = f", sized to the compute of {full:g} full trials" if reduction_factor else ""
    if name == "tpe":
        cap = 11 * num_params - 1 if num_params else _OPTUNA_STARTUP
        startup = _clamp(math.ceil(full / 3) - overlap, 2, cap)
        return _random_first(
            name, startup, overlap, num_samples, start_points, f"finished before TPE, {max_concurrent} at a time{sized}"
        )
    if name == "nsga2":
        population = min(num_samples, _clamp(num_samples // 4, 4, _OPTUNA_POPULATION))
        population = max(population, 2)  # Optuna's minimum
        generations = num_samples / population
        first = f", the first holding {min(start_points, num_samples)} start points" if start_points else ""
        return SamplerPlan(
            name, {"population_size": population}, f"{generations:.1f} generations of {population} trials{first}"
        )
    if name == "gp":
        startup = _clamp(math.ceil(full / 4) - overlap, 2, _OPTUNA_STARTUP)
        return _random_first(name, startup, overlap, num_samples, start_points, f"completed before the GP{sized}")
    if 0 < start_points < num_samples:
        return SamplerPlan(name, {}, f"{start_points} start points, then {num_samples - start_points} trials at random")
    if start_points:
        return SamplerPlan(name, {}, _start_points(start_points, num_samples))
    return SamplerPlan(name, {}, f"all {num_samples} trials at random")


def build_sampler(plan: SamplerPlan, seed: int) -> optuna.samplers.BaseSampler:
    """The Optuna sampler of ``plan``, seeded. (Constraints reach TPE, NSGA-II and GP through the trials'
    ``set_constraint``, see ``study.constraints``.)"""
    import optuna  # local: the command checks --sampler and prints the plan before Optuna loads

    if plan.name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, **plan.settings)
    if plan.name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, **plan.settings)
    if plan.name == "gp":
        return optuna.samplers.GPSampler(seed=seed, **plan.settings)
    if plan.name == "random":
        return optuna.samplers.RandomSampler(seed=seed, **plan.settings)
    raise ValueError(f"sampler={plan.name!r} is not allowed; allowed: {', '.join(SAMPLER_NAMES)}")


# What a model-based sampler does once its startup trials have ended.
_THEN = {"tpe": "TPE", "gp": "log expected hypervolume improvement"}


def _random_first(
    name: str, startup: int, overlap: int, num_samples: int, start_points: int, startup_means: str
) -> SamplerPlan:
    """A sampler that draws at random until ``startup`` trials have ended (``startup_means`` says how they count),
    then models: about ``startup + overlap`` trials are asked before it models (those asked while the startup ones
    ran), the ``start_points`` first of them, the others drawn at random."""
    settings = {"n_startup_trials": startup}
    if start_points >= num_samples:
        return SamplerPlan(name, settings, _start_points(start_points, num_samples))
    random_trials = max(0, min(num_samples, startup + overlap) - start_points)
    included = ", start points included" if start_points else ""
    first = f"{_start_points(start_points, num_samples)}, then " if start_points else ""
    return SamplerPlan(
        name,
        settings,
        f"{first}about {random_trials} of {num_samples} trials random ({startup} {startup_means}{included}), "
        f"then {_THEN[name]}",
    )


def _start_points(count: int, num_samples: int) -> str:
    """What the first trials are: the space's start points (all of them, or as many as there are trials)."""
    if count > num_samples:
        return f"all {num_samples} trials start points (the first {num_samples} of {count})"
    return f"all {num_samples} trials start points" if count == num_samples else f"{count} start points"


def _clamp(value: int, low: int, high: int) -> int:
    return max(low, min(high, value))
