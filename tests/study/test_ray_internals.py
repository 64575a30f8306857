"""study.ray_internals against the real Ray: every private attribute it relies on is still there.

If this fails after a Ray upgrade, the message names the attribute; fix the accessor in study/ray_internals.py.
"""

from __future__ import annotations

import importlib
from functools import reduce

import optuna
import pytest
from ray import tune
from ray.tune.search import ConcurrencyLimiter, SearchGenerator
from ray.tune.search.optuna import OptunaSearch

from study import ray_internals

optuna.logging.set_verbosity(optuna.logging.WARNING)


def objects(tmp_path) -> dict[str, object]:
    searcher = OptunaSearch(space=lambda trial: {"x": trial.suggest_float("x", 0, 1)}, metric=["a"], mode=["max"])
    generator = SearchGenerator(ConcurrencyLimiter(searcher, max_concurrent=1))
    tuner = tune.Tuner(
        lambda config: None,
        tune_config=tune.TuneConfig(search_alg=generator, num_samples=2),
        run_config=tune.RunConfig(name="internals", storage_path=str(tmp_path)),
    )
    return {
        "ray.tune.Tuner": tuner,
        "ray.tune.search.optuna.OptunaSearch": searcher,
        "ray.tune.search.SearchGenerator": generator,
    }


def test_every_private_attribute_is_still_there(tmp_path) -> None:
    live = objects(tmp_path)
    for owner, path in ray_internals.ATTRIBUTES:
        module, _, name = owner.rpartition(".")
        assert isinstance(live[owner], getattr(importlib.import_module(module), name))
        try:
            reduce(getattr, path.split("."), live[owner])
        except AttributeError as error:
            pytest.fail(f"Ray no longer has {owner}.{path} ({error}); update study/ray_internals.py")


def test_the_accessors_reach_what_they_say(tmp_path) -> None:
    live = objects(tmp_path)
    searcher, generator = live["ray.tune.search.optuna.OptunaSearch"], live["ray.tune.search.SearchGenerator"]
    assert ray_internals.restored_search_alg(live["ray.tune.Tuner"]) is generator
    assert isinstance(ray_internals.optuna_study(searcher), optuna.Study)
    config = searcher.suggest("t1")
    assert ray_internals.optuna_trials(searcher)["t1"].params == config
    searcher.on_trial_complete("t1", {"a": 1.0})
    assert ray_internals.told_trial_ids(searcher) == {"t1"}
    ray_internals.raise_total_samples(generator, 5)
    ray_internals.raise_total_samples(generator, 3)  # never lowered
    assert generator._total_samples == 5
