"""The default embedded transfer converges before any pruning, for both learners.

A study's front should measure what pruning costs, not how long a trial trained: with every default (the
``pretrained-digits`` backbone transferred to handwritten digits 5-9, the default epochs, learning rates and
schedule), step 0 must already be a converged transfer (issue 10). One seed per learner, what CI affords: two
default trainings on one thread, about 40 CPU-seconds. ``benchmarks/convergence.py`` checks three seeds per learner
and what doubling the epochs gains.
"""

from __future__ import annotations

import pytest

from spa.config import ExperimentConfig
from spa.experiment import run_experiment


@pytest.mark.parametrize("learner", ["finetune", "splora"])
def test_default_transfer_is_converged_at_step_0(learner: str, spa_cache_dir: str) -> None:
    config = ExperimentConfig.from_flat(
        {"learner": learner, "seed": 0, "steps": 0, "threads": 1, "cache_dir": spa_cache_dir}
    )
    (step0,) = run_experiment(config)
    assert step0["step"] == 0 and step0["density"] == 1.0 and step0["epoch"] == config.optim.epochs
    assert step0["val_accuracy"] >= 0.95, step0
