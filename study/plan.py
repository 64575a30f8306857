"""The plan of a study: its settings and the search space every trial gets, resolved and checked before anything
starts (no Ray, Optuna or MLflow yet). Checks that need the space, or a look at the data, are made here, and so
are the cheap checks of what the flags point at (``study.preflight``: the tracking server answers, the weights fit,
the storage path is writable, ...).

On ``--resume`` a study whose driver state is missing here (a new head node) gets it back from the latest snapshot
beside its trials (``study.driver_state``) before its settings are read.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

from spa.config import ExperimentConfig
from study import preflight, preflight_weights
from study.constraints import Constraints
from study.schedulers import STOPPING
from study.settings import (
    DEFAULT_STORAGE_PATH,
    MANIFEST,
    MLFLOW_DB,
    OPTUNA_DB,
    SMOKE_BUDGET,
    StudySettings,
    UsageError,
    check_flags,
    given_settings,
    new_settings,
    resumed_settings,
    snapshot_location_of,
    where,
)
from study.spaces import SearchSpace, load_space
from study.sqlite_files import sqlite_path

__all__ = ["plan", "overrides", "space_values", "max_final_step"]


def plan(args: argparse.Namespace) -> tuple[StudySettings, SearchSpace]:
    """Resolve and check everything before anything starts: the settings and the space every trial gets."""
    check_flags(args)
    given = given_settings(args)
    space = None if args.space is None else load_space(args.space)
    preflight.check_address(args.address or os.environ.get("RAY_ADDRESS"))
    preflight.check_writable_dir("--storage-path", given["storage_path"] or DEFAULT_STORAGE_PATH)
    if given["cache_dir"]:
        preflight.check_writable_dir("--cache-dir", given["cache_dir"])
    if given["optuna_storage"]:
        preflight.check_optuna_storage(given["optuna_storage"])
    if args.resume:
        space_name = None if space is None else space.name
        directory = where(given, space_name)
        location = snapshot_location_of(given, space_name)
        _restore_driver_state(directory, location)
        if not directory.exists():
            raise UsageError(
                f"--resume: no study at {directory}, nor a snapshot of one at {location}; "
                "run without --resume to start it"
            )
        remedy = _resume_remedy(location)
        if (directory / MANIFEST).is_file():  # its absence is said by resumed_settings
            preflight.check_resume_state(manifest=directory / MANIFEST, optuna_db=None, study_name="", remedy=remedy)
        settings = resumed_settings(given, directory, space_name=space_name)
        preflight.check_resume_state(
            manifest=directory / MANIFEST,
            optuna_db=sqlite_path(settings.optuna_url),
            study_name=settings.name,
            remedy=remedy,
        )
        space = load_space(directory / f"{settings.space}.toml")  # the study's copy, as it started
    else:
        settings = new_settings(
            given, space.name, cluster=(args.address or os.environ.get("RAY_ADDRESS") or "local") != "local"
        )
        if settings.study_dir.exists():
            raise UsageError(
                f"a study named {settings.name!r} exists at {settings.study_dir}; "
                "pass --resume to continue it, or another --name"
            )
        _check_new_optuna_study(settings)
    preflight.check_writable_dir("--cache-dir", settings.cache_dir)
    preflight.check_tracking_uri(settings.tracking_uri)  # before the slower checks: it may wait TIMEOUT_S
    _check_device_settings(space, settings, resumed=args.resume)
    space = space.with_overrides(overrides(settings, space))
    if settings.smoke:
        # One epoch and one pruning step cannot reach a floor set for the real budget; a smoke study checks the
        # pipeline, so its front is of every completed trial.
        space = dataclasses.replace(space, constraints=Constraints())
    if settings.scheduler in STOPPING and max_final_step(space) < 1:
        raise UsageError(
            f"--scheduler {settings.scheduler} stops trials at pruning steps, but this space prunes no step"
        )
    _check_datasets(space)
    _check_weights(space)
    return settings, space


# --- the driver's state on --resume ----------------------------------------------------------------------------------


def _restore_driver_state(directory: Path, location: str) -> None:
    """Bring back from the latest snapshot at ``location`` every piece of the driver's state missing here: the
    manifest, the study's space, MOASHA's rung journal, the Optuna db and the MLflow SQLite store (where the manifest
    says they live). All or nothing: a damaged snapshot is refused before anything is written."""
    from study.driver_state import SnapshotError, read_latest, restore_snapshot, snapshot_text
    from study.schedulers import MOASHA_JOURNAL

    try:
        snapshot = read_latest(location)
        if snapshot is None:
            return
        # The manifest here, else the snapshot's: it says where the databases live.
        local = directory / MANIFEST
        targets: dict[str, Path] = {MANIFEST: local}
        try:
            manifest = json.loads((local.read_text() if local.is_file() else snapshot_text(snapshot, MANIFEST)) or "")
            targets.update({name: directory / name for name in (f"{manifest['space']}.toml", MOASHA_JOURNAL)})
            optuna_db = sqlite_path(manifest.get("optuna_storage") or f"sqlite:///{directory / OPTUNA_DB}")
            mlflow_db = sqlite_path(manifest["tracking_uri"])
        except (OSError, ValueError, KeyError, TypeError):
            optuna_db = mlflow_db = None  # an unreadable manifest is said, with what to do, by the checks that follow
        if optuna_db is not None:
            targets[OPTUNA_DB] = optuna_db
        if mlflow_db is not None:
            targets[MLFLOW_DB] = mlflow_db
        written = restore_snapshot(snapshot, targets)
    except SnapshotError as error:
        raise UsageError(f"--resume: {error}; restore {location} from a backup, or start a new study") from None
    if written:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(snapshot.created))
        paths = ", ".join(str(path) for path in written)
        print(f"restored from {location} (snapshot {snapshot.generation} of {when}): {paths}", flush=True)


def _resume_remedy(location: str) -> str:
    """What to do about a damaged file of the driver's state: restore it from the snapshot, if there is one."""
    from study.driver_state import SnapshotError, read_latest

    try:
        if read_latest(location) is not None:
            return f"move it away and --resume restores it from the snapshot at {location}"
    except SnapshotError:
        pass
    return "start a new study with another --name"


def _check_new_optuna_study(settings: StudySettings) -> None:
    """A new study in a shared Optuna database must not take a name already there."""
    url = settings.optuna_storage
    if not url:
        return
    path = sqlite_path(url)
    if path is not None and not path.exists():
        return
    import optuna  # local: only a study given --optuna-storage looks into it before it starts

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        names = optuna.study.get_all_study_names(storage=url)
    except Exception as error:  # noqa: BLE001 - SQLAlchemy's errors: refused login, no such database, ...
        first = str(error).splitlines()[0] if str(error) else ""
        raise UsageError(
            f"--optuna-storage {preflight.hide_password(url)}: cannot open it ({type(error).__name__}: {first}); "
            "check the URL, user and password"
        ) from None
    if settings.name in names:
        raise UsageError(
            f"--optuna-storage {preflight.hide_password(url)} holds a study named {settings.name!r}; "
            "pass --resume to continue it, or another --name"
        )


# --- where a trial runs ----------------------------------------------------------------------------------------------


def _check_device_settings(space: SearchSpace, settings: StudySettings, *, resumed: bool) -> None:
    """The command decides a trial's device (``overrides``), so a space's ``device`` would be silently replaced (a
    resumed study's copy of its space holds the device the command pinned); and CUDA-only settings on trials without
    a GPU would fail every trial, after Ray, Optuna and MLflow were set up."""
    # A resumed study's copy fixes the device its command pinned; a searched device is refused either way.
    if (not resumed and "device" in space.fixed) or any(param.name == "device" for param in space.params):
        raise UsageError(
            f"{space.path}: device is not allowed in a space; allowed: --gpus-per-trial, which sets it "
            "(cuda when > 0, else cpu)"
        )
    cuda_only = [key for key in ("bf16", "cuda_graphs") if True in space_values(space, key)]
    if cuda_only and settings.gpus_per_trial == 0:
        raise UsageError(
            f"{space.path}: {' and '.join(f'{key} = true' for key in cuda_only)} needs a CUDA GPU per trial, but "
            "--gpus-per-trial is 0; allowed: --gpus-per-trial 1 (or 1/k to share one), or false in the space"
        )


# --- what a trial will load ------------------------------------------------------------------------------------------


def _check_weights(space: SearchSpace) -> None:
    """A state-dict file fits every architecture and stem a trial may build; ImageNet weights can be had."""
    from spa.config import NAMED_WEIGHTS

    archs = space_values(space, "arch")
    for weights in space_values(space, "weights"):
        if weights == "imagenet":
            preflight_weights.check_imagenet_weights(archs)
        elif weights not in NAMED_WEIGHTS and weights is not None:
            from spa.data import uses_cifar_stem

            stems = [uses_cifar_stem(dataset) for dataset in space_values(space, "dataset")]
            preflight_weights.check_weights(weights, archs=archs, cifar_stems=stems)


def overrides(settings: StudySettings, space: SearchSpace) -> dict[str, Any]:
    """The fixed settings the command pins in every trial of ``space``."""
    pinned: dict[str, Any] = {}
    for key in ("dataset", "data_dir", "arch", "weights"):
        if getattr(settings, key) is not None:
            pinned[key] = getattr(settings, key)
    if settings.smoke:
        pinned.update(SMOKE_BUDGET)
        if "densities" in space.fixed or any(param.name == "densities" for param in space.params):
            pinned["densities"] = None  # an explicit schedule would override the one smoke step
    # One torch thread per CPU Tune gives the trial, so concurrent trials do not oversubscribe the cores.
    pinned["threads"] = settings.cpus_per_trial
    pinned["device"] = "cuda" if settings.gpus_per_trial > 0 else "cpu"
    pinned["cache_dir"] = settings.cache_dir
    return pinned


def space_values(space: SearchSpace, key: str) -> list[Any]:
    """Every value ``key`` can take in a trial of ``space`` (a searched number: its two ends)."""
    for param in space.params:
        if param.name == key:
            return list(param.choices) if param.kind == "categorical" else [param.low, param.high]
    if key in space.fixed:
        return [space.fixed[key]]
    return [ExperimentConfig().to_flat()[key]]


def max_final_step(space: SearchSpace) -> int:
    """The last pruning step any trial can reach (the max_t of the schedulers that stop trials)."""
    densities = space_values(space, "densities")
    if any(value is not None for value in densities):
        return max(len(value) for value in densities if value is not None)
    return int(max(space_values(space, "steps")))


def _check_datasets(space: SearchSpace) -> None:
    """A dataset a trial cannot load is bad input, found now rather than in every trial."""
    from spa.data import EMBEDDED_DATASETS, default_data_dir, load_splits  # local: torchvision only once needed
    from spa.splits import DataError, DatasetFilesError

    data_dir = space_values(space, "data_dir")[0]
    for dataset in space_values(space, "dataset"):
        if dataset in EMBEDDED_DATASETS:
            continue  # embedded: always there
        try:
            load_splits(dataset, data_dir=data_dir, download=False)
        except DatasetFilesError as error:  # its remedy names spa.run's --download, which this command lacks
            root = data_dir or str(default_data_dir())
            how = (
                f"e.g. python -c \"from spa.data import load_splits; load_splits('{dataset}', data_dir='{root}', "
                'download=True)"'
                if error.downloadable
                else "(torchvision cannot download it)"
            )
            never = "a study never downloads: put the original files there first"
            raise UsageError(f"{error.problem}; {never}, {how}") from None
        except DataError as error:
            raise UsageError(str(error)) from None
