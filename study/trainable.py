"""The Tune trainable: one ``spa`` experiment per trial. It only computes and reports; it never touches MLflow.

Every pruning step (step 0 = trained, unpruned) is reported with that step's checkpoint, so a trial that was
interrupted continues from its last step (``tune.get_checkpoint()``) and repeats no work. Errors propagate: Tune
marks the trial ERROR and the driver records it (Optuna FAIL, MLflow FAILED) while the study goes on.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from typing import Any

import ray
from ray import tune

from spa.config import ExperimentConfig
from spa.counting import projected_learned_parameters
from spa.experiment import pruning_densities, run_experiment
from study.names import FINAL_STEP, PROJECTED_LEARNED_PARAMS, STUDY_KEYS

__all__ = ["run_trial"]


def run_trial(config: dict[str, Any]) -> None:
    """Tune function trainable over a flat config (experiment settings plus ``STUDY_KEYS``)."""
    # One "Checkpoint successfully created" line per pruning step per trial says nothing the results do not.
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)
    experiment = ExperimentConfig.from_flat({k: v for k, v in config.items() if k not in STUDY_KEYS})
    densities = pruning_densities(experiment)
    final_step, final_density = len(densities), (densities[-1] if densities else 1.0)
    # Where this attempt runs: a trial retried after its node died reports from another node.
    node_id = ray.get_runtime_context().get_node_id()
    reported: list[int] = []

    def with_study_keys(metrics: dict[str, float]) -> dict[str, Any]:
        projected = projected_learned_parameters(
            metrics["learned_params"],
            learner=experiment.learner.learner,
            density=metrics["target_density"],
            final_density=final_density,
        )
        return {**metrics, PROJECTED_LEARNED_PARAMS: projected, FINAL_STEP: final_step, "node_id": node_id}

    def report(metrics: dict[str, float], checkpoint_dir: str | None) -> None:
        checkpoint = tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        tune.report(with_study_keys(metrics), checkpoint=checkpoint)
        reported.append(int(metrics["step"]))
        if checkpoint_dir:  # tune.report has persisted a copy in the trial's storage
            shutil.rmtree(checkpoint_dir, ignore_errors=True)

    checkpoint = tune.get_checkpoint()
    scratch = tempfile.mkdtemp(prefix="spa-trial-")
    try:
        if checkpoint is None:
            run_experiment(experiment, report, checkpoint_root=scratch)
            return
        with checkpoint.as_directory() as directory:
            history = run_experiment(experiment, report, resume_from=directory, checkpoint_root=scratch)
        if not reported and history:
            # Interrupted after its final step was saved but before the driver recorded the end: say it again, so
            # the trial ends on its final result (and is not mistaken for one stopped early).
            tune.report(with_study_keys(history[-1]))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
