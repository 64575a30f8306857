"""A study's MLflow experiment: where its artifacts go, how the UI is told it is model training, and its URLs.

Plain strings in and out (no MLflow import), so the driver, ``study.report`` and the tests share one home for
these facts.

- **Artifacts.** Only a local store (``sqlite:``, or a plain path) gets an artifact location chosen here, a
  ``file://`` folder in the study directory; a tracking server (``http(s)://``, ``databricks``...) assigns its own
  (``mlflow-artifacts:/...`` under its ``--artifacts-destination``, or its bucket), so nothing lands on the
  driver's disk that the server's users cannot read.
- **The UI's mode.** MLflow 3's UI opens an experiment in its GenAI mode (traces) unless the URL carries
  ``workflowType=machine_learning`` (or the user flips its GenAI / Model training switch). The experiment is tagged
  ``mlflow.experimentKind = custom_model_development`` as well (the value of ``CUSTOM_MODEL_DEVELOPMENT`` in MLflow
  3.17's JS bundle), but in a headless-Chromium check 3.17's UI still opened the tagged experiment in GenAI mode
  without the URL parameter: the printed URLs carry it.
- **URLs.** The UI is a hash-routed app: ``<base>/#/experiments/<id>/runs?workflowType=machine_learning`` (runs
  table, chart view), ``.../models?...`` (the experiment's logged models).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

__all__ = [
    "EXPERIMENT_KIND_TAG",
    "MODEL_TRAINING_KIND",
    "WORKFLOW_QUERY",
    "DEFAULT_UI_BASE",
    "is_local_store",
    "artifact_location",
    "ui_base",
    "runs_url",
    "models_url",
]

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING_KIND = "custom_model_development"
WORKFLOW_QUERY = "workflowType=machine_learning"
DEFAULT_UI_BASE = "http://127.0.0.1:5000"  # where README's `mlflow ui` command serves a local store
_SERVER_SCHEMES = ("http", "https")


def is_local_store(tracking_uri: str) -> bool:
    """A store this process writes directly: ``sqlite:``, ``file:`` or a plain path (not a server)."""
    scheme = urlparse(tracking_uri).scheme
    return scheme in ("", "file", "sqlite") or len(scheme) == 1  # a Windows drive letter is a path


def artifact_location(tracking_uri: str, study_dir: str | Path) -> str | None:
    """The artifact location to create the study's experiment with: a folder of the study directory for a local
    store, None (the server decides) otherwise."""
    if is_local_store(tracking_uri):
        return (Path(study_dir) / "mlartifacts").resolve().as_uri()
    return None


def ui_base(tracking_uri: str) -> str:
    """Where the UI of this store is: the server itself, or README's ``mlflow ui`` for a local store."""
    parsed = urlparse(tracking_uri)
    if parsed.scheme in _SERVER_SCHEMES:
        return tracking_uri.rstrip("/")
    return DEFAULT_UI_BASE


def runs_url(base: str, experiment_id: str) -> str:
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?{WORKFLOW_QUERY}"


def models_url(base: str, experiment_id: str) -> str:
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/models?{WORKFLOW_QUERY}"
