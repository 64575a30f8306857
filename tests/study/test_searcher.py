"""study.outcome and study.searcher: what Optuna is told for every way a trial can end, without running trials."""

from __future__ import annotations

import dataclasses
import math

import optuna
import pytest
from optuna.trial import TrialState

from study.names import FINAL_STEP, TRIAL_NUMBER
from study.outcome import COMPLETE, FAILED, PRUNED, judge
from study.searcher import SAMPLERS, StudySearch, StudySearcher, make_sampler
from study.settings import SAMPLERS as COMMAND_SAMPLERS
from study.settings import SMOKE_BUDGET
from study.spaces import load_space

optuna.logging.set_verbosity(optuna.logging.WARNING)
OBJECTIVES = ["val_accuracy", "learned_params"]


def result(step: int, final: int, accuracy: float = 0.8, learned: float = 1000.0) -> dict:
    return {"step": step, FINAL_STEP: final, "val_accuracy": accuracy, "learned_params": learned, "node_ip": "x"}


JUDGEMENTS = {
    "final step, finite objectives": (result(3, 3), False, COMPLETE, (0.8, 1000.0)),
    "no pruning at all (final step 0)": (result(0, 0), False, COMPLETE, (0.8, 1000.0)),
    "stopped early by a scheduler": (result(1, 3), False, PRUNED, None),
    "stopped before any result": (None, False, PRUNED, None),
    "raised an error after a step": (result(1, 3), True, FAILED, None),
    "raised an error at the final step": (result(3, 3), True, FAILED, None),
    "NaN objective at the final step": (result(3, 3, accuracy=math.nan), False, FAILED, None),
    "infinite objective at the final step": (result(3, 3, learned=math.inf), False, FAILED, None),
    "objective missing": ({"step": 3, FINAL_STEP: 3, "val_accuracy": 0.5}, False, FAILED, None),
}


@pytest.mark.parametrize("case", list(JUDGEMENTS))
def test_judge(case: str) -> None:
    last, error, state, values = JUDGEMENTS[case]
    outcome = judge(last, OBJECTIVES, error=error)
    assert (outcome.state, outcome.values) == (state, values)
    assert (outcome.reason is None) == (state == COMPLETE)


def make_searcher(storage: optuna.storages.BaseStorage | None = None) -> StudySearcher:
    space = load_space("splora_lrp").with_overrides(SMOKE_BUDGET)
    return StudySearcher(
        space,
        sampler=make_sampler("random", 0),
        storage=storage or optuna.storages.InMemoryStorage(),
        study_name="unit",
    )


def test_define_by_run_config_is_fixed_plus_sampled_plus_trial_number() -> None:
    searcher = make_searcher()
    config = searcher.suggest("a")
    assert config["epochs"] == 1 and config["learner"] == "splora" and config[TRIAL_NUMBER] == 0
    frozen = searcher.study.trials[0]
    # steps, recovery and final density pinned by the smoke budget, shape fixed by the space
    assert set(frozen.params) == {"rank", "init_range", "lr"} and config["shape"] == "geometric"
    assert all(config[name] == value for name, value in frozen.params.items())
    assert frozen.user_attrs["tune_trial_id"] == "a"


def test_each_ending_is_told_as_what_it_was() -> None:
    searcher = make_searcher()
    for trial_id in "abcde":
        searcher.suggest(trial_id)
    searcher.on_trial_complete("a", result=result(1, 3))  # ASHA stopped it: not COMPLETE with step-1 values
    searcher.on_trial_complete("b", result=result(3, 3, accuracy=math.nan))  # must not raise
    searcher.on_trial_complete("c", result=result(3, 3, accuracy=0.9, learned=500.0))
    searcher.on_trial_complete("d", error=True)
    searcher.on_trial_complete("e")  # removed before it started
    searcher.on_trial_complete("c", result=result(3, 3, accuracy=0.1))  # a repeated call changes nothing

    a, b, c, d, e = searcher.study.trials
    assert (a.state, a.values) == (TrialState.PRUNED, None) and "step 1 of 3" in a.user_attrs["pruned_because"]
    # what it had reached when stopped, beside the reason (never its values: they are not final)
    assert {k: v for k, v in a.user_attrs.items() if k.startswith("last_")} == {
        "last_step": 1.0,
        "last_val_accuracy": 0.8,
        "last_learned_params": 1000.0,
    }
    assert (b.state, b.values) == (TrialState.FAIL, None) and "val_accuracy is nan" in b.user_attrs["failed_because"]
    assert (c.state, c.values) == (TrialState.COMPLETE, [0.9, 500.0])
    assert (d.state, d.values) == (TrialState.FAIL, None) and d.user_attrs["failed_because"]
    assert e.state == TrialState.PRUNED
    assert [t.number for t in searcher.study.best_trials] == [2]  # only the complete trial is on Optuna's front


def test_ray_optuna_search_alone_would_count_a_stopped_trial_as_complete() -> None:
    """Why StudySearcher exists: Ray 2.60's OptunaSearch tells COMPLETE for an early-stopped multi-objective trial."""
    from ray.tune.search.optuna import OptunaSearch

    plain = OptunaSearch(
        space={"x": optuna.distributions.FloatDistribution(0, 1)}, metric=OBJECTIVES, mode=["max", "min"]
    )
    plain.suggest("a")
    plain.on_trial_complete("a", result=result(1, 3))
    assert plain._ot_study.trials[0].state == TrialState.COMPLETE


def test_trials_tune_lost_are_asked_again_or_counted_so_the_study_keeps_its_size(tmp_path) -> None:
    """The Optuna db (from a snapshot) is ahead of Tune's saved state: b was asked, c asked and told after it."""
    storage_url = f"sqlite:///{tmp_path / 'optuna.db'}"
    searcher = make_searcher(optuna.storages.RDBStorage(storage_url))
    searcher.suggest("a")
    searcher.save(str(tmp_path / "searcher.pkl"))  # Tune's last saved state: trial a only
    lost_config = searcher.suggest("b")
    searcher.suggest("c")
    searcher.on_trial_complete("c", result=result(1, 1))

    restored = make_searcher(optuna.storages.RDBStorage(storage_url))
    restored.restore(str(tmp_path / "searcher.pkl"))
    search = StudySearch(restored, max_concurrent=4, num_samples=4)
    search.set_state({"counter": 1, "total_samples": 4, "finished": False, "experiment": None})
    assert search.get_state()["counter"] == 2  # a, and c (finished): two more to ask
    again = search.searcher.suggest("d")  # Tune's next trial runs b's Optuna trial again
    assert again == lost_config and again[TRIAL_NUMBER] == 1
    fresh = search.searcher.suggest("e")
    assert fresh[TRIAL_NUMBER] == 3
    study = optuna.load_study(study_name="unit", storage=storage_url)
    assert [(t.number, t.state, t.user_attrs["tune_trial_id"]) for t in study.trials] == [
        (0, TrialState.RUNNING, "a"),
        (1, TrialState.RUNNING, "d"),
        (2, TrialState.COMPLETE, "c"),
        (3, TrialState.RUNNING, "e"),
    ]
    restored.on_trial_complete("d", result=result(1, 1))
    assert optuna.load_study(study_name="unit", storage=storage_url).trials[1].state == TrialState.COMPLETE

    # Resumed again from a state saved after this: nothing is lost, c is not counted twice.
    restored.save(str(tmp_path / "later.pkl"))
    later = make_searcher(optuna.storages.RDBStorage(storage_url))
    later.restore(str(tmp_path / "later.pkl"))
    assert later.lost_finished == 0 and later._lost_unfinished == []


def test_a_new_study_asks_its_start_points_first_and_a_searcher_built_again_does_not_enqueue_them(tmp_path) -> None:
    storage_url = f"sqlite:///{tmp_path / 'optuna.db'}"
    points = [dict(point) for point in load_space("splora_lrp").with_overrides(SMOKE_BUDGET).start_points]
    assert [point["rank"] for point in points] == [1, 64]  # the smoke budget leaves rank, lr and init_range
    searcher = make_searcher(optuna.storages.RDBStorage(storage_url))
    configs = [searcher.suggest(trial_id) for trial_id in "abc"]
    trials = optuna.load_study(study_name="unit", storage=storage_url).trials
    assert [trial.params for trial in trials[:2]] == points
    assert [{key: config[key] for key in points[0]} for config in configs[:2]] == points
    assert "fixed_params" not in trials[2].system_attrs and set(trials[2].params) == set(points[0])  # sampled

    # Built again over the study's storage (Ray's OptunaSearch enqueues on every construction), nothing is enqueued.
    again = make_searcher(optuna.storages.RDBStorage(storage_url))
    assert [trial.state for trial in again.study.trials] == [TrialState.RUNNING] * 3
    again.suggest("d")
    assert "fixed_params" not in again.study.trials[3].system_attrs


def test_ray_optuna_search_alone_enqueues_its_points_each_time_it_is_built(tmp_path) -> None:
    """Why StudySearcher passes the points only to a new study."""
    from ray.tune.search.optuna import OptunaSearch

    storage_url = f"sqlite:///{tmp_path / 'optuna.db'}"
    for _ in range(2):
        OptunaSearch(
            space={"x": optuna.distributions.FloatDistribution(0, 1)},
            metric=OBJECTIVES,
            mode=["max", "min"],
            points_to_evaluate=[{"x": 0.5}],
            storage=optuna.storages.RDBStorage(storage_url),
            study_name="plain",
        )
    waiting = optuna.load_study(study_name="plain", storage=storage_url).get_trials(states=(TrialState.WAITING,))
    assert [trial.system_attrs["fixed_params"] for trial in waiting] == [{"x": 0.5}] * 2


def test_a_partial_start_point_leaves_the_rest_to_the_sampler() -> None:
    space = load_space("splora_lrp").with_overrides(SMOKE_BUDGET)
    space = dataclasses.replace(space, start_points=({"rank": 3},))
    searcher = StudySearcher(
        space, sampler=make_sampler("random", 0), storage=optuna.storages.InMemoryStorage(), study_name="unit"
    )
    config = searcher.suggest("a")
    lr = next(param for param in space.params if param.name == "lr")
    assert config["rank"] == 3 and lr.low <= config["lr"] <= lr.high
    assert searcher.study.trials[0].params["rank"] == 3 and set(searcher.study.trials[0].params) == {
        "rank",
        "lr",
        "init_range",
    }


def test_a_resumed_search_may_grow_but_never_shrink() -> None:
    search = StudySearch(make_searcher(), max_concurrent=2, num_samples=5)
    search.set_state({"counter": 3, "total_samples": 3, "finished": False, "experiment": None})
    assert search.total_samples == 5 and not search.is_finished()
    search.num_samples = 2
    search.set_state({"counter": 3, "total_samples": 3, "finished": False, "experiment": None})
    assert search.total_samples == 3 and search.is_finished()


def test_the_command_offers_exactly_the_samplers_there_are() -> None:
    assert set(COMMAND_SAMPLERS) == set(SAMPLERS)
    for name in SAMPLERS:
        assert isinstance(make_sampler(name, 0), optuna.samplers.BaseSampler)


def test_constraints_are_told_to_optuna_and_learned_by_the_sampler() -> None:
    """The space's floor (min_val_accuracy) and a relative one: step 0 is remembered in the storage, the values are
    told as the trial's constraints (set_constraint), the reason as a user attr, and Optuna's front leaves the
    violators out."""
    from study.constraints import CONSTRAINTS_ATTR, UNPRUNED_VAL_ACCURACY, VIOLATION
    from study.sampler_plan import build_sampler, plan_sampler

    space = load_space("splora_lrp").with_overrides(SMOKE_BUDGET)
    space = dataclasses.replace(
        space, constraints=dataclasses.replace(space.constraints, min_val_accuracy_relative=0.9)
    )
    sampler = build_sampler(plan_sampler("tpe", num_samples=8), 0)
    searcher = StudySearcher(space, sampler=sampler, storage=optuna.storages.InMemoryStorage(), study_name="unit")
    endings = {
        "good": (0.95, 0.9, 500.0),  # (step-0 accuracy, final accuracy, learned params)
        "below the floor": (0.5, 0.5, 100.0),
        "below 90% of its own step 0": (0.99, 0.85, 200.0),
    }
    for trial_id, (unpruned, final, learned) in endings.items():
        searcher.suggest(trial_id)
        searcher.on_trial_result(trial_id, result(0, 2, accuracy=unpruned, learned=2000.0))
        searcher.on_trial_complete(trial_id, result=result(2, 2, accuracy=final, learned=learned))
    good, floor, relative = searcher.study.trials
    assert all(trial.state == TrialState.COMPLETE for trial in (good, floor, relative))
    assert good.user_attrs[UNPRUNED_VAL_ACCURACY] == 0.95 and VIOLATION not in good.user_attrs
    assert good.user_attrs[CONSTRAINTS_ATTR] == pytest.approx(
        {"min_val_accuracy": 0.6 - 0.9, "min_val_accuracy_relative": 0.9 * 0.95 - 0.9}
    )
    assert floor.user_attrs[VIOLATION] == "val_accuracy 0.5 < min_val_accuracy 0.6"  # 0.5 >= 0.9 x 0.5 holds
    assert relative.user_attrs[VIOLATION].startswith("val_accuracy 0.85 < min_val_accuracy_relative 0.9 x 0.99")
    told = {key: value for key, value in floor.system_attrs.items() if key.startswith("constraints:")}
    assert told == {f"constraints:{key}": value for key, value in floor.user_attrs[CONSTRAINTS_ATTR].items()}
    assert [trial.number for trial in searcher.study.best_trials] == [0]  # feasible trials only


def test_tpe_puts_a_stopped_trial_in_its_not_good_group() -> None:
    """What the module docstring says TPE learns from a PRUNED trial of a two-objective study: with 5 finished trials
    its good group holds ceil(5 / 10) = 1, the best completed one (trial 0 dominates trials 1 and 2), never a
    pruned one, however good its last values were."""
    from optuna.samplers._tpe.sampler import _split_trials

    study = optuna.create_study(directions=["maximize", "minimize"])
    for values in ([0.9, 10.0], [0.8, 20.0], [0.7, 30.0]):
        study.add_trial(optuna.trial.create_trial(values=values, params={}, distributions={}))
    for last in ([0.95, 1.0], [0.99, 0.5]):  # better than every completed trial, but stopped
        study.add_trial(
            optuna.trial.create_trial(state=TrialState.PRUNED, params={}, distributions={},
                                      user_attrs={"last_val_accuracy": last[0], "last_learned_params": last[1]})
        )  # fmt: skip
    trials = study.get_trials(deepcopy=False)
    below, above = _split_trials(study, trials, optuna.samplers._tpe.sampler.default_gamma_multiobjective(len(trials)))
    assert [trial.number for trial in below] == [0]
    assert [trial.number for trial in above] == [1, 2, 3, 4]
