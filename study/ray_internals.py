"""Every private attribute of Ray Tune this project touches, in one place, because Ray 2.60 offers no public way.

Each accessor says what it needs and why. ``tests/study/test_ray_internals.py`` builds the real Ray objects and
fails, naming the attribute, if a Ray upgrade renames or removes one; fix the accessor here and nothing else.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ATTRIBUTES",
    "restored_search_alg",
    "optuna_study",
    "optuna_trials",
    "told_trial_ids",
    "raise_total_samples",
]

# (class, attribute path) pairs the accessors below read or write; the test checks each on a live object.
ATTRIBUTES = (
    ("ray.tune.Tuner", "_local_tuner._tune_config.search_alg"),
    ("ray.tune.search.optuna.OptunaSearch", "_ot_study"),
    ("ray.tune.search.optuna.OptunaSearch", "_ot_trials"),
    ("ray.tune.search.optuna.OptunaSearch", "_completed_trials"),
    ("ray.tune.search.SearchGenerator", "_total_samples"),
)


def restored_search_alg(tuner: Any) -> Any:
    """The search algorithm of a tuner from ``Tuner.restore``: it is unpickled from ``tuner.pkl`` and Tune has no
    public handle on it, yet a larger ``--num-samples`` on resume must reach it."""
    return tuner._local_tuner._tune_config.search_alg


def optuna_study(searcher: Any) -> Any:
    """The ``optuna.Study`` an ``OptunaSearch`` asks and tells (told PRUNED or FAIL directly, which Tune cannot)."""
    return searcher._ot_study


def optuna_trials(searcher: Any) -> dict[str, Any]:
    """Tune trial id -> the ``optuna.Trial`` an ``OptunaSearch`` asked for it."""
    return searcher._ot_trials


def told_trial_ids(searcher: Any) -> set[str]:
    """The Tune trial ids an ``OptunaSearch`` has already told Optuna about (a set it updates)."""
    return searcher._completed_trials


def raise_total_samples(generator: Any, num_samples: int) -> None:
    """Let a restored ``SearchGenerator`` ask for ``num_samples`` trials in all (Tune restores the first count)."""
    generator._total_samples = max(generator._total_samples, num_samples)
