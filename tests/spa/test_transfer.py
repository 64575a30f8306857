"""The default embedded transfer converges before any pruning, for both learners.

A study's front should measure what pruning costs, not how long a trial trained: with every default (the
``pretrained-digits`` backbone transferred to handwritten digits 5-9, the default epochs, learning rate and
schedule), step 0 must already be a converged transfer. Slow-ish (a few default trainings on one thread).
"""

from __future__ import annotations

import pytest

from spa.config import ExperimentConfig
from spa.experiment import run_experiment


@pytest.mark.parametrize("learner", ["finetune", "splora"])
def test_default_transfer_is_converged_at_step_0(learner: str, spa_cache_dir: str) -> None:
    config = ExperimentConfig.from_flat({"learner": learner, "steps": 0, "threads": 1, "cache_dir": spa_cache_dir})
    (step0,) = run_experiment(config)
    assert step0["step"] == 0 and step0["density"] == 1.0
    assert step0["val_accuracy"] >= 0.95, step0
