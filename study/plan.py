"""The plan of a study: its settings and the search space every trial gets, resolved and checked before anything
starts (no Ray, Optuna or MLflow yet). Checks that need the space, or a look at the data, are made here.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from typing import Any

from spa.config import ExperimentConfig
from study.constraints import Constraints
from study.schedulers import STOPPING
from study.settings import (
    SMOKE_BUDGET,
    StudySettings,
    UsageError,
    check_flags,
    given_settings,
    new_settings,
    resumed_settings,
    where,
)
from study.spaces import SearchSpace, load_space

__all__ = ["plan", "overrides", "space_values", "max_final_step"]


def plan(args: argparse.Namespace) -> tuple[StudySettings, SearchSpace]:
    """Resolve and check everything before anything starts: the settings and the space every trial gets."""
    check_flags(args)
    given = given_settings(args)
    space = None if args.space is None else load_space(args.space)
    if args.resume:
        space_name = None if space is None else space.name
        directory = where(given, space_name)
        settings = resumed_settings(given, directory, space_name=space_name)
        space = load_space(directory / f"{settings.space}.toml")  # the study's copy, as it started
    else:
        settings = new_settings(given, space.name, cluster=bool(args.address or os.environ.get("RAY_ADDRESS")))
        if settings.study_dir.exists():
            raise UsageError(
                f"a study named {settings.name!r} exists at {settings.study_dir}; "
                "pass --resume to continue it, or another --name"
            )
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
    return settings, space


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
    from spa.data import EMBEDDED_DATASETS, DataError, load_splits  # local: torchvision only once needed

    data_dir = space_values(space, "data_dir")[0]
    for dataset in space_values(space, "dataset"):
        if dataset in EMBEDDED_DATASETS:
            continue  # embedded: always there
        try:
            load_splits(dataset, data_dir=data_dir, download=False)
        except DataError as error:
            raise UsageError(str(error)) from None
