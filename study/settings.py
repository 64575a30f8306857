"""What defines a study (``StudySettings``), from the command's flags: every flag checked here, normalised once,
then either filled with defaults (a new study) or held against the study's manifest (``--resume``).

No Ray, Optuna, MLflow or torch: bad input is answered before any of them is imported.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import uuid
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from spa.config import NAMED_WEIGHTS
from spa.files import write_atomically
from study.names import DEFAULT_TRACKING_URI
from study.sampler_plan import SAMPLER_NAMES as SAMPLERS
from study.schedulers import SCHEDULERS

__all__ = [
    "UsageError",
    "StudySettings",
    "DEFAULT_NUM_SAMPLES",
    "SMOKE_NUM_SAMPLES",
    "SMOKE_BUDGET",
    "DEFAULT_STORAGE_PATH",
    "SAMPLERS",
    "SCHEDULERS",
    "MANIFEST",
    "OPTUNA_DB",
    "MLFLOW_DB",
    "check_flags",
    "shares_gpus_evenly",
    "given_settings",
    "new_settings",
    "resumed_settings",
    "snapshot_location_of",
    "study_dir",
    "trial_storage",
    "where",
    "write_manifest",
]

DEFAULT_NUM_SAMPLES = 8
MAX_EXPERIMENT_NAME = 500  # MLflow 3.17's limit (MAX_EXPERIMENT_NAME_LENGTH); empty is refused as well
SMOKE_NUM_SAMPLES = 2
# The smallest budget that still trains, prunes once, recovers and measures. Batch 32, not 64: twice the steps for
# the same images; on --num-samples 3 --seed 1 the best trial reached val 0.74 (0.53 at batch 64; issue 10). Final
# density 0.5: the spaces sample it on a log scale down to 0.05, and one epoch of recovery after one cut to 18-25 %
# left val 0.23-0.41 on --num-samples 3 --seed 1 (a cut to 46 %: 0.82; issue 10).
SMOKE_BUDGET = {
    "epochs": 1,
    "recovery_epochs": 1,
    "steps": 1,
    "final_density": 0.5,
    "max_score_batches": 2,
    "batch_size": 32,
}
DEFAULT_STORAGE_PATH = "ray_results"
MANIFEST = "study.json"
OPTUNA_DB = "optuna.db"  # the Optuna study's SQLite file in the study directory, unless --optuna-storage
MLFLOW_DB = "mlflow.db"  # the MLflow store's name in a snapshot, when it is a local SQLite file
# Retries of a failed trial unless --max-failures says: on a cluster a node can die under a trial, locally not.
DEFAULT_MAX_FAILURES_CLUSTER, DEFAULT_MAX_FAILURES_LOCAL = 3, 0


class UsageError(ValueError):
    """Bad input to the command; one line."""


@dataclass(frozen=True)
class StudySettings:
    """What defines a study, with every default resolved; kept in ``<study dir>/study.json`` for ``--resume``."""

    space: str  # the space's name
    name: str
    storage_path: str
    num_samples: int
    max_concurrent: int | None  # None: as many as the cluster's resources allow
    cpus_per_trial: int
    gpus_per_trial: float
    sampler: str
    seed: int
    scheduler: str
    dataset: str | None  # None: the space's own setting
    data_dir: str | None
    arch: str | None
    weights: str | None
    cache_dir: str
    tracking_uri: str
    experiment_name: str
    smoke: bool
    study_id: str = ""
    max_failures: int = 0  # retries of a trial whose node died or that raised (Tune's FailureConfig)
    optuna_storage: str = ""  # an RDB URL (--optuna-storage); "": the SQLite file OPTUNA_DB in the study directory
    register_model: str | None = None  # the registered model the front's models become versions of

    @property
    def study_dir(self) -> Path:
        """Where the driver keeps the study's own state (Optuna db, manifest, fronts): a local directory."""
        return study_dir(self.storage_path, self.name, self.cache_dir)

    @property
    def trial_storage(self) -> str:
        """Where Tune keeps trial results and checkpoints: the study directory, or ``URI/name`` for a URI."""
        return trial_storage(self.storage_path, self.name, self.cache_dir)

    @property
    def optuna_url(self) -> str:
        """Where the Optuna study lives: ``--optuna-storage``, else ``sqlite:///<study dir>/optuna.db``."""
        return self.optuna_storage or f"sqlite:///{self.study_dir / OPTUNA_DB}"

    @property
    def snapshot_location(self) -> str:
        """Where snapshots of the driver's state go (``study.driver_state``): beside the trials."""
        return _snapshot_location(self.trial_storage)


# The settings that may differ from the study's on --resume (the rest must match or be left out) ...
_RESUME_MAY_GROW = ("num_samples",)
# ... and those that say where to find the study rather than what it is.
_ADDRESS = ("name", "storage_path")


def is_uri(storage_path: str) -> bool:
    return "://" in storage_path


def study_dir(storage_path: str, name: str, cache_dir: str) -> Path:
    # SQLite (the Optuna study) cannot live on object storage: with a URI the driver's state stays on the driver's
    # machine, under the cache directory, while trials write their results and checkpoints to the URI.
    if is_uri(storage_path):
        return Path(cache_dir) / "studies" / name
    return Path(storage_path) / name


def trial_storage(storage_path: str, name: str, cache_dir: str) -> str:
    """Where Tune keeps a study's trial results and checkpoints: its study directory, or ``URI/name``."""
    return (
        f"{storage_path.rstrip('/')}/{name}" if is_uri(storage_path) else str(study_dir(storage_path, name, cache_dir))
    )


def _absolute(path: str | os.PathLike[str]) -> str:
    return str(Path(path).expanduser().resolve())


def _tracking_uri(text: str) -> str:
    """``sqlite:///relative.db`` made absolute, so a resumed study finds the same store from any directory."""
    if text.startswith("sqlite:///") and not text.startswith("sqlite:////"):
        return "sqlite:///" + _absolute(text[len("sqlite:///") :])
    if "://" not in text or text.startswith("file:"):
        raise UsageError(
            f"--tracking-uri {text!r}: MLflow {metadata.version('mlflow')} refuses the file store; "
            f"use a database, e.g. {DEFAULT_TRACKING_URI}, or a server, e.g. http://127.0.0.1:5000"
        )
    return text


def shares_gpus_evenly(gpus: float) -> bool:
    """Whether ``gpus`` per trial is 0, whole, or 1/k of a GPU: a fraction such as 0.3 seats three trials on a GPU
    and leaves a tenth of it idle (and 0.4 two, leaving a fifth), and Ray refuses fractions above 1 outright."""
    if not (isinstance(gpus, (int, float)) and math.isfinite(gpus) and gpus >= 0):
        return False
    if gpus == 0 or float(gpus).is_integer():
        return True
    share = round(1 / gpus)
    return gpus < 1 and share >= 2 and abs(share * gpus - 1) < 1e-3  # 0.3333 for a third: Ray keeps 4 decimals


def _optuna_storage(text: str) -> str:
    """An RDB URL for Optuna, ``sqlite:///relative.db`` made absolute (as ``--tracking-uri``)."""
    if text.startswith("sqlite:///") and not text.startswith("sqlite:////"):
        return "sqlite:///" + _absolute(text[len("sqlite:///") :])
    return text


def _snapshot_location(trial_storage: str) -> str:
    from study.driver_state import snapshot_location  # local: pyarrow only once a study is located

    return snapshot_location(trial_storage)


def check_flags(args: argparse.Namespace) -> None:
    """Every flag's value on its own; what depends on the space or on the study's manifest is checked later."""
    if args.space is None and not (args.resume and args.name):
        raise UsageError("--space is required (or --resume with --name); see --list-spaces")
    if args.name is not None and (not args.name.strip() or "/" in args.name or args.name in (".", "..")):
        raise UsageError(f"--name {args.name!r} is not allowed; allowed: a plain directory name")
    for flag, value, low in (
        ("--num-samples", args.num_samples, 1),
        ("--max-concurrent", args.max_concurrent, 1),
        ("--cpus-per-trial", args.cpus_per_trial, 1),
        ("--seed", args.seed, 0),
        ("--max-failures", args.max_failures, 0),
    ):
        if value is not None and value < low:
            raise UsageError(f"{flag} {value} is not allowed; allowed: an integer >= {low}")
    if args.gpus_per_trial is not None and not shares_gpus_evenly(args.gpus_per_trial):
        raise UsageError(
            f"--gpus-per-trial {args.gpus_per_trial:g} is not allowed; allowed: 0, a whole number, or 1/k for a whole "
            "k >= 2 (0.5, 0.25, 0.2, ...: k trials share one GPU and leave no slice of it idle)"
        )
    if args.weights is not None and args.weights not in NAMED_WEIGHTS and not Path(args.weights).expanduser().is_file():
        raise UsageError(f"--weights {args.weights!r} is not a file nor one of {', '.join(NAMED_WEIGHTS)}")
    if args.data_dir is not None and not Path(args.data_dir).expanduser().is_dir():
        raise UsageError(f"--data-dir {args.data_dir!r} does not exist; create it or pass another")
    if args.tracking_uri is not None:
        _tracking_uri(args.tracking_uri)
    if args.experiment_name is not None and not 0 < len(args.experiment_name) <= MAX_EXPERIMENT_NAME:
        raise UsageError(
            f"--experiment-name {args.experiment_name!r} is not allowed; allowed: 1 to {MAX_EXPERIMENT_NAME} characters"
        )
    if args.register_model is not None and not _is_model_name(args.register_model):
        raise UsageError(
            f"--register-model {args.register_model!r} is not allowed; allowed: a name without quotes, '/' or ':' "
            "that is not '.' nor starts with '..'"
        )


def _is_model_name(name: str) -> bool:
    """Whether MLflow 3.17 takes ``name`` for a registered model (``_validate_model_name``: not blank, no ``/`` or
    ``:``, not ``.`` or ``..``-led); a quote would break the registry's filter strings."""
    return bool(name.strip()) and not any(c in name for c in "/:'") and name != "." and not name.startswith("..")


def given_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The settings the flags give, normalised (absolute paths, numbers typed); None where a flag was left out.

    The one normalisation of flags, for a new study and a resumed one alike.
    """
    return {
        "name": args.name,
        "storage_path": None if args.storage_path is None else _storage_path(args.storage_path),
        "num_samples": args.num_samples,
        "max_concurrent": args.max_concurrent,
        "cpus_per_trial": args.cpus_per_trial,
        "gpus_per_trial": None if args.gpus_per_trial is None else float(args.gpus_per_trial),
        "sampler": args.sampler,
        "seed": args.seed,
        "scheduler": args.scheduler,
        "dataset": args.dataset,
        "data_dir": None if args.data_dir is None else _absolute(args.data_dir),
        "arch": args.arch,
        "weights": args.weights if args.weights in (None, *NAMED_WEIGHTS) else _absolute(args.weights),
        "cache_dir": None if args.cache_dir is None else _absolute(args.cache_dir),
        "tracking_uri": None if args.tracking_uri is None else _tracking_uri(args.tracking_uri),
        "experiment_name": args.experiment_name,
        "smoke": args.smoke or None,
        "max_failures": args.max_failures,
        "optuna_storage": None if args.optuna_storage is None else _optuna_storage(args.optuna_storage),
        "register_model": args.register_model,
    }


def _storage_path(text: str) -> str:
    """A local or NFS path made absolute; a URI (``s3://bucket/dir``, ``gs://``, ...) kept as it is."""
    return text if is_uri(text) else _absolute(text)


def _default_cache_dir() -> str:
    from spa.pretrain import default_cache_dir  # local: spa.pretrain is only needed for this default

    return str(default_cache_dir())


def _address(given: dict[str, Any], space_name: str | None) -> tuple[str, str, str]:
    """(name, storage path, cache dir) of the study the flags point at: enough to find its directory."""
    name = given["name"] or (f"{space_name}-smoke" if given["smoke"] else space_name)
    storage_path = given["storage_path"] or _storage_path(DEFAULT_STORAGE_PATH)
    return name, storage_path, given["cache_dir"] or _default_cache_dir()


def snapshot_location_of(given: dict[str, Any], space_name: str | None) -> str:
    """Where the snapshots of the study the flags point at are (they survive the loss of its directory)."""
    name, storage_path, cache_dir = _address(given, space_name)
    return _snapshot_location(trial_storage(storage_path, name, cache_dir))


def where(given: dict[str, Any], space_name: str | None) -> Path:
    """The directory of the study the flags point at (its name, or the space's, under its storage path)."""
    name, storage_path, cache_dir = _address(given, space_name)
    return study_dir(storage_path, name, cache_dir)


def new_settings(given: dict[str, Any], space_name: str, *, cluster: bool) -> StudySettings:
    """A new study's settings: the flags given, defaults for the rest (``cluster``: the driver joins a cluster)."""
    name, storage_path, cache_dir = _address(given, space_name)
    smoke = bool(given["smoke"])
    tracking_uri = given["tracking_uri"] or _tracking_uri(os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI)

    def value(key: str, default: Any) -> Any:
        return default if given[key] is None else given[key]

    return StudySettings(
        space=space_name,
        name=name,
        storage_path=storage_path,
        num_samples=value("num_samples", SMOKE_NUM_SAMPLES if smoke else DEFAULT_NUM_SAMPLES),
        max_concurrent=given["max_concurrent"],
        cpus_per_trial=value("cpus_per_trial", 1),
        gpus_per_trial=value("gpus_per_trial", 0.0),
        sampler=value("sampler", SAMPLERS[0]),
        seed=value("seed", 0),
        scheduler=value("scheduler", SCHEDULERS[0]),
        dataset=given["dataset"],
        data_dir=given["data_dir"],
        arch=given["arch"],
        weights=given["weights"],
        cache_dir=cache_dir,
        tracking_uri=tracking_uri,
        experiment_name=value("experiment_name", name),
        smoke=smoke,
        study_id=uuid.uuid4().hex,
        max_failures=value("max_failures", DEFAULT_MAX_FAILURES_CLUSTER if cluster else DEFAULT_MAX_FAILURES_LOCAL),
        optuna_storage=value("optuna_storage", ""),
        register_model=given["register_model"],
    )


def resumed_settings(given: dict[str, Any], directory: Path, *, space_name: str | None) -> StudySettings:
    """The settings of the study in ``directory``; a flag given now must agree with them (only ``--num-samples``
    may grow). ``space_name``: the space given now, if any."""
    manifest = directory / MANIFEST
    remote = is_uri(given["storage_path"] or DEFAULT_STORAGE_PATH)
    if not manifest.is_file() or not (remote or (directory / "tuner.pkl").is_file()):
        if not directory.exists():
            raise UsageError(f"--resume: no study at {directory}; run without --resume to start it")
        raise UsageError(f"--resume: {directory} holds no resumable study (no {MANIFEST} or tuner.pkl)")
    try:
        settings = StudySettings(**json.loads(manifest.read_text()))
    except (ValueError, TypeError) as error:
        raise UsageError(f"--resume: {manifest} is unreadable: {error}") from None
    for key, value in {**given, "space": space_name}.items():
        if key in _ADDRESS:
            continue
        study_value = getattr(settings, key)
        if value is None or value == study_value:
            continue
        flag = "--" + key.replace("_", "-")
        if key in _RESUME_MAY_GROW:
            if value < study_value:
                raise UsageError(f"--resume: {flag} {value} is below the study's {study_value}; a study only grows")
            continue
        raise UsageError(
            f"--resume: {flag} {value} differs from the study's {study_value}; leave it out to resume, "
            "or start a new study with another --name"
        )
    grown = {key: given[key] for key in _RESUME_MAY_GROW if given[key] is not None}
    return dataclasses.replace(settings, **grown)


def write_manifest(settings: StudySettings) -> None:
    text = json.dumps(dataclasses.asdict(settings), indent=2) + "\n"
    write_atomically(settings.study_dir / MANIFEST, lambda path: path.write_text(text))
