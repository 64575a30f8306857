"""The MLflow writes of the study's callback (``study.tracking``), as small functions over a client.

The study's experiment is found (restored if deleted) or created, and tagged as model training
(``study.mlflow_experiment``); its parent run is found again by its ``study_id`` tag or created with the study's
params; params go in batches of MLflow's limit; tags are set in one call and deleted only where present.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mlflow.entities import Param, RunTag
from mlflow.tracking import MlflowClient

from study.mlflow_experiment import EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND, artifact_location

__all__ = ["open_experiment", "open_parent_run", "log_params", "set_tags", "delete_tags"]

_BATCH = 100  # MLflow's limit of params per log_batch


def open_experiment(client: MlflowClient, name: str, *, tracking_uri: str, study_dir: Path) -> str:
    """The id of the experiment ``name``, created (or restored, if deleted) and tagged as model training."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        # A local store writes artifacts beside the study; a server puts them where it was told to.
        location = artifact_location(tracking_uri, study_dir)
        experiment_id = client.create_experiment(name, artifact_location=location)
    else:
        experiment_id = experiment.experiment_id
        if experiment.lifecycle_stage != "active":
            client.restore_experiment(experiment_id)
    # MLflow 3's UI opens an experiment without this tag in its GenAI (traces) mode.
    client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND)
    return experiment_id


def open_parent_run(
    client: MlflowClient, experiment_id: str, tags: Mapping[str, str], params: Mapping[str, Any]
) -> str:
    """The study's parent run, named by its ``study_id`` and ``study_name`` tags: found again by ``study_id``
    (marked RUNNING, ``tags`` set again) or created, named ``study_name``, with ``tags`` and ``params``."""
    study_id = tags["study_id"]
    parents = client.search_runs(
        [experiment_id], filter_string=f"tags.study_id = '{study_id}' and tags.study_role = 'parent'"
    )
    if parents:
        run_id = parents[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        set_tags(client, run_id, tags)
        return run_id
    run = client.create_run(experiment_id, tags=dict(tags), run_name=tags["study_name"])
    log_params(client, run.info.run_id, params)
    return run.info.run_id


def log_params(client: MlflowClient, run_id: str, params: Mapping[str, Any]) -> None:
    items = [Param(str(k), str(v)) for k, v in params.items()]
    for start in range(0, len(items), _BATCH):
        client.log_batch(run_id, params=items[start : start + _BATCH])


def set_tags(client: MlflowClient, run_id: str, tags: Mapping[str, str]) -> None:
    if tags:
        client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def delete_tags(client: MlflowClient, run_id: str, keys: Iterable[str]) -> None:
    present = client.get_run(run_id).data.tags
    for key in keys:
        if key in present:
            client.delete_tag(run_id, key)
