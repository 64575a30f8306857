"""study.sampler_plan: the settings sized to the budget, the samplers built from them, and make_sampler's use."""

from __future__ import annotations

import pickle

import optuna
import pytest

from study.sampler_plan import SAMPLER_NAMES, SamplerPlan, build_sampler, plan_sampler
from study.searcher import make_sampler

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.mark.parametrize(
    ("num_samples", "num_params", "max_concurrent", "startup", "random_trials"),
    [
        (8, 7, 2, 2, 3),  # the default study: 3 of 8 random, 5 guided (Optuna's default: all 8 random)
        (8, 7, 1, 3, 3),
        (2, 7, 2, 2, 2),  # --smoke: nothing to learn from
        (64, 7, 8, 15, 22),
        (1000, 7, 8, 76, 83),  # capped at the MOTPE paper's 11 * params - 1
        (1000, None, 8, 10, 17),  # parameters unknown: Optuna's 10
    ],
)
def test_tpe_startup_is_a_third_of_the_budget_less_the_concurrency(
    num_samples, num_params, max_concurrent, startup, random_trials
) -> None:
    plan = plan_sampler("tpe", num_samples=num_samples, num_params=num_params, max_concurrent=max_concurrent)
    assert plan.settings == {"n_startup_trials": startup}
    assert f"about {random_trials} of {num_samples} trials random" in plan.reason


@pytest.mark.parametrize(
    ("name", "num_samples", "max_concurrent", "reduction_factor", "startup"),
    [
        # 16 trials stopped by halving cost about 8 full ones: ceil(8 / 3) - 1 = 2, as an 8-trial fifo study (not 5)
        ("tpe", 16, 2, 2, 2),
        ("tpe", 64, 8, 2, 4),  # ceil(32 / 3) - 7 = 4 (fifo: 15)
        ("tpe", 60, 1, 3, 7),  # ceil(20 / 3) = 7
        ("gp", 64, 2, 2, 7),  # ceil(32 / 4) - 1 = 7 (fifo: 10)
        ("tpe", 8, 2, 2, 2),  # ceil(4 / 3) - 1 = 1: at least 2
    ],
)
def test_startup_under_successive_halving_is_sized_to_the_compute(
    name, num_samples, max_concurrent, reduction_factor, startup
) -> None:
    plan = plan_sampler(
        name, num_samples=num_samples, num_params=7, max_concurrent=max_concurrent, reduction_factor=reduction_factor
    )
    assert plan.settings == {"n_startup_trials": startup}
    assert f"of {num_samples} trials random" in plan.reason
    assert f"sized to the compute of {num_samples / reduction_factor:g} full trials" in plan.reason


@pytest.mark.parametrize(
    ("num_samples", "population"),
    [(2, 2), (3, 3), (8, 4), (16, 4), (64, 16), (200, 50), (1000, 50)],
)
def test_nsga2_population_gives_generations(num_samples, population) -> None:
    plan = plan_sampler("nsga2", num_samples=num_samples, num_params=7, max_concurrent=2)
    assert plan.settings == {"population_size": population}
    if num_samples >= 16 and population < 50:
        assert num_samples / population >= 4


@pytest.mark.parametrize(("num_samples", "max_concurrent", "startup"), [(8, 2, 2), (16, 1, 4), (64, 4, 10), (4, 4, 2)])
def test_gp_startup(num_samples, max_concurrent, startup) -> None:
    plan = plan_sampler("gp", num_samples=num_samples, num_params=7, max_concurrent=max_concurrent)
    assert plan.settings == {"n_startup_trials": startup}


def test_random_has_no_settings_and_params_are_flat() -> None:
    assert plan_sampler("random", num_samples=8).settings == {}
    plan = plan_sampler("tpe", num_samples=8, num_params=7, max_concurrent=2)
    assert plan.params() == {"sampler": "tpe", "sampler_n_startup_trials": 2}
    assert plan.header().startswith("tpe(n_startup_trials=2): about 3 of 8 trials random")


@pytest.mark.parametrize(
    ("name", "num_samples", "start_points", "settings", "reason"),
    [
        # the default study: 2 startup trials are the 2 start points; 1 more is asked before the first 2 finish
        (
            "tpe",
            8,
            2,
            {"n_startup_trials": 2},
            "2 start points, then about 1 of 8 trials random (2 finished before TPE",
        ),
        ("tpe", 20, 2, {"n_startup_trials": 6}, "2 start points, then about 5 of 20 trials random"),  # ceil(20/3) - 1
        ("tpe", 8, 4, {"n_startup_trials": 2}, "4 start points, then about 0 of 8 trials random"),
        ("gp", 8, 2, {"n_startup_trials": 2}, "2 start points, then about 1 of 8 trials random (2 completed before"),
        ("tpe", 2, 2, {"n_startup_trials": 2}, "all 2 trials start points"),  # --smoke
        ("tpe", 1, 2, {"n_startup_trials": 2}, "all 1 trials start points (the first 1 of 2)"),
        ("nsga2", 8, 2, {"population_size": 4}, "2.0 generations of 4 trials, the first holding 2 start points"),
        ("random", 8, 2, {}, "2 start points, then 6 trials at random"),
    ],
)
def test_start_points_count_towards_the_startup(name, num_samples, start_points, settings, reason) -> None:
    plan = plan_sampler(name, num_samples=num_samples, num_params=6, max_concurrent=2, start_points=start_points)
    assert plan.settings == settings  # sized to the budget as without them
    assert reason in plan.reason, plan.reason


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "cmaes", "num_samples": 8}, "allowed: tpe, nsga2, gp, random"),
        ({"name": "tpe", "num_samples": 0}, "num_samples=0"),
        ({"name": "tpe", "num_samples": 8, "max_concurrent": 0}, "max_concurrent=0"),
        ({"name": "tpe", "num_samples": 8, "start_points": -1}, "start_points=-1"),
        ({"name": "tpe", "num_samples": 8, "reduction_factor": 1}, "reduction_factor=1: allowed: None or a number > 1"),
    ],
)
def test_plan_refuses(kwargs, message) -> None:
    name = kwargs.pop("name")
    with pytest.raises(ValueError, match=message):
        plan_sampler(name, **kwargs)


@pytest.mark.parametrize("name", SAMPLER_NAMES)
def test_built_samplers_carry_the_plan_and_pickle(name: str) -> None:
    plan = plan_sampler(name, num_samples=16, num_params=3, max_concurrent=2)
    sampler = build_sampler(plan, seed=0)
    kind = {
        "tpe": optuna.samplers.TPESampler,
        "nsga2": optuna.samplers.NSGAIISampler,
        "gp": optuna.samplers.GPSampler,
        "random": optuna.samplers.RandomSampler,
    }[name]
    assert isinstance(sampler, kind)
    if "n_startup_trials" in plan.settings:
        assert sampler._n_startup_trials == plan.settings["n_startup_trials"]
    pickle.loads(pickle.dumps(sampler))  # Tune pickles the searcher, and its sampler, with the experiment


def test_make_sampler_sizes_when_given_the_budget() -> None:
    assert make_sampler("tpe", 0)._n_startup_trials == 10  # Optuna's default, as before
    assert make_sampler("tpe", 0, num_samples=8, num_params=7, max_concurrent=2)._n_startup_trials == 2
    assert isinstance(make_sampler("gp", 0, num_samples=8), optuna.samplers.GPSampler)


def test_gp_runs_a_two_objective_ask_tell_study() -> None:
    """GPSampler on two objectives, as StudySearcher drives it (ask, tell, with a pruned trial among them)."""
    sampler = build_sampler(SamplerPlan("gp", {"n_startup_trials": 2}), seed=0)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    for number in range(5):
        trial = study.ask()
        x, y = trial.suggest_float("lr", 1e-3, 1e-1, log=True), trial.suggest_int("rank", 1, 16)
        if number == 2:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, [1 - (x - 0.01) ** 2, float(y)])
    assert len(study.best_trials) >= 1
