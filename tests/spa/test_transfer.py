"""The default embedded transfer converges before any pruning, for both learners.

A study's front should measure what pruning costs, not how long a trial trained: with every default (the
``pretrained-digits`` backbone transferred to handwritten digits 5-9, the default epochs, learning rates and
schedule), step 0 must already be a converged transfer. SPLoRA runs on three seeds: before its adapters had a
learning rate of their own it reached 0.95 on seed 0 only (issue 10). Slow-ish: four default trainings on one
thread, about 80 CPU-seconds.
"""

from __future__ import annotations

import pytest

from spa.config import ExperimentConfig
from spa.experiment import run_experiment


@pytest.mark.parametrize(("learner", "seed"), [("finetune", 0), ("splora", 0), ("splora", 1), ("splora", 2)])
def test_default_transfer_is_converged_at_step_0(learner: str, seed: int, spa_cache_dir: str) -> None:
    config = ExperimentConfig.from_flat(
        {"learner": learner, "seed": seed, "steps": 0, "threads": 1, "cache_dir": spa_cache_dir}
    )
    (step0,) = run_experiment(config)
    assert step0["step"] == 0 and step0["density"] == 1.0 and step0["epoch"] == config.optim.epochs
    assert step0["val_accuracy"] >= 0.95, step0
