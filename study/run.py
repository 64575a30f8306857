"""The run of a planned study: connect to Ray, fit the trials to its nodes, pretrain the backbone once, build the
tuner (Optuna searcher, scheduler, MLflow callback, snapshots of the driver's state beside the trials) and fit it,
then print the summary.

The plan (``study.plan``) has checked every input before this starts.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from importlib import metadata
from typing import TYPE_CHECKING, Any

from spa.config import PRETRAINED_DIGITS, ExperimentConfig
from study.names import trial_dirname, trial_name
from study.outcome import FAILED, failures_verdict
from study.plan import max_final_step, space_values
from study.settings import MANIFEST, MLFLOW_DB, OPTUNA_DB, StudySettings, UsageError, write_manifest
from study.spaces import SearchSpace

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "INTERRUPTED",
    "run_study",
    "connect",
    "check_resources",
    "trial_resources",
    "trial_trainable",
    "build_tuner",
    "summarize",
]

INTERRUPTED = 130  # the shell's status for Ctrl-C


def run_study(settings: StudySettings, space: SearchSpace, *, resume: bool, address: str | None) -> int:
    """Run (or, with ``resume``, continue) the study; the exit status (see ``summarize``)."""
    from study.driver_heap import heap_unfrozen_after

    started = time.perf_counter()
    ray, started_ray = connect(address)
    try:
        nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
        if _cluster_address(address):  # an autoscaler may start the workers that trials need
            from study.autoscaling import countable_nodes

            nodes = countable_nodes(nodes)
        max_concurrent = check_resources(nodes, settings)
        pretrain(space, settings)
        tuner = build_tuner(settings, space, max_concurrent, resume=resume)
        with heap_unfrozen_after():  # the FrozenHeap callback unfreezes only at an experiment end Tune reached
            first_error = _first_error(tuner.fit().errors)
    finally:
        if started_ray:
            ray.shutdown()
    return summarize(settings, space, seconds=time.perf_counter() - started, first_error=first_error)


def _first_error(errors: Sequence[BaseException]) -> str | None:
    """The first trial error as one line, ``NonFiniteLossError: training loss became nan ...`` (Tune wraps it)."""
    if not errors:
        return None
    cause = getattr(errors[0], "cause", None) or errors[0]
    lines = [line for line in str(cause).splitlines() if line.strip()]
    return f"{type(cause).__name__}: {lines[0].strip() if lines else ''}"


def connect(address: str | None) -> tuple[Any, bool]:
    """Ray, and whether this call started it (a running Ray, e.g. a test session's, is used as it is)."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Every pruning step is a checkpoint and Tune snapshots its state after each (num_to_keep=1): that is the
    # point (a resume loses at most one step), not a bottleneck worth a warning each time.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    import ray

    if ray.is_initialized():
        return ray, False
    # Ray's own INFO lines ("Started a local Ray instance", ...) would bury a one-line error on stderr.
    if _cluster_address(address):
        try:
            ray.init(address=address, logging_level=logging.WARNING)
        except ConnectionError as error:
            raise UsageError(f"--address {address or os.environ['RAY_ADDRESS']}: {error}") from None
    else:  # "local": not the machine's latest `ray start` cluster, which Ray joins when given no address
        ray.init(address="local", include_dashboard=False, logging_level=logging.WARNING)
    return ray, True


def _cluster_address(address: str | None) -> str | None:
    """The Ray cluster to join (``--address``, else ``$RAY_ADDRESS``); None for a local Ray of the driver's own."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    return None if address == "local" else address


def check_resources(nodes: Sequence[dict[str, float]], settings: StudySettings) -> int:
    """The trials' concurrency over the live nodes' resources; a trial that no node can place is bad input (not a
    trial pending forever)."""
    largest_cpus = max((node.get("CPU", 0.0) for node in nodes), default=0.0)
    largest_gpus = max((node.get("GPU", 0.0) for node in nodes), default=0.0)
    if settings.cpus_per_trial > largest_cpus:
        raise UsageError(
            f"--cpus-per-trial {settings.cpus_per_trial} exceeds the {largest_cpus:g} CPUs of the largest Ray node"
        )
    if settings.gpus_per_trial > largest_gpus:
        raise UsageError(
            f"--gpus-per-trial {settings.gpus_per_trial:g} exceeds the {largest_gpus:g} GPUs of the largest Ray node"
            + ("; leave it out to run on CPUs" if largest_gpus == 0 else "")
        )
    fits = sum(int(node.get("CPU", 0.0) // settings.cpus_per_trial) for node in nodes)
    if settings.gpus_per_trial > 0:
        fits = min(fits, sum(int(node.get("GPU", 0.0) // settings.gpus_per_trial) for node in nodes))
    return settings.max_concurrent or max(1, fits)


def trial_resources(settings: StudySettings) -> dict[str, float]:
    """What Tune reserves for each trial: its CPUs and its (possibly fractional, ``--gpus-per-trial 0.5``) GPUs.

    Ray places fractional trials on one GPU and sets each one's ``CUDA_VISIBLE_DEVICES`` to it; they share its
    memory with no limit between them (benchmarks/gpu_check.sh measures two at 0.5).
    """
    return {"cpu": settings.cpus_per_trial, "gpu": settings.gpus_per_trial}


def trial_trainable(settings: StudySettings) -> Any:
    """The study's trainable with its resources attached, as the tuner gets it."""
    from ray import tune

    from study.trainable import run_trial

    return tune.with_resources(run_trial, trial_resources(settings))


def pretrain(space: SearchSpace, settings: StudySettings) -> None:
    """Train the digits backbone once, here, before trials start: trials never race to train it."""
    if PRETRAINED_DIGITS not in space_values(space, "weights"):
        return
    from spa.pretrain import PretrainConfig, pretrained_backbone

    for arch in sorted(set(space_values(space, "arch"))):
        began = time.perf_counter()
        path = pretrained_backbone(PretrainConfig(arch=arch), settings.cache_dir)
        print(f"backbone {arch} pretrained on printed digits: {path} ({time.perf_counter() - began:.0f}s)", flush=True)


def _versions() -> dict[str, str]:
    versions = {}
    for tag, package in (
        ("spa", "spa-study"),
        ("torch", "torch"),
        ("ray", "ray"),
        ("optuna", "optuna"),
        ("mlflow", "mlflow"),
    ):
        try:
            versions[f"version_{tag}"] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[f"version_{tag}"] = "unknown"
    return versions


def build_tuner(settings: StudySettings, space: SearchSpace, max_concurrent: int, *, resume: bool) -> Any:
    """Tune's tuner for the study: a new one, or (``resume``) the study's own restored from its storage."""
    from ray import tune

    from study.driver_heap import FrozenHeap
    from study.ray_internals import restored_search_alg
    from study.schedulers import REDUCTION_FACTOR, STOPPING, make_scheduler

    trainable = trial_trainable(settings)
    study_dir = settings.study_dir
    if resume:
        tuner = tune.Tuner.restore(
            settings.trial_storage,
            trainable=trainable,
            resume_unfinished=True,
            resume_errored=False,
            restart_errored=False,
        )
        # Tune restores the sample count of the first run; a larger --num-samples extends the study.
        restored_search_alg(tuner).num_samples = settings.num_samples
        write_manifest(settings)
        return tuner

    import optuna

    from study.sampler_plan import build_sampler, plan_sampler
    from study.searcher import StudySearch, StudySearcher
    from study.tracking import StudyTracker

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study_dir.mkdir(parents=True)
    # The study's own copy, resolved: a later edit of a base the space extends does not change a resumed study.
    header = f"The search space of study {settings.name!r}, resolved from {space.path} and its bases."
    (study_dir / f"{settings.space}.toml").write_text(space.to_toml(header=header))
    # A study of fewer trials than start points runs the first ones; no other is left waiting in the storage.
    space = dataclasses.replace(space, start_points=space.start_points[: settings.num_samples])
    sampler_plan = plan_sampler(
        settings.sampler,
        num_samples=settings.num_samples,
        num_params=len(space.params),
        max_concurrent=max_concurrent,
        reduction_factor=REDUCTION_FACTOR if settings.scheduler in STOPPING else None,
        start_points=len(space.start_points),
    )
    print(f"sampler: {sampler_plan.header()}", flush=True)
    for index, point in enumerate(space.start_points):
        print(f"start point {index}: {', '.join(f'{key}={value}' for key, value in point.items())}", flush=True)
    searcher = StudySearcher(
        space,
        sampler=build_sampler(sampler_plan, settings.seed),
        storage=optuna.storages.RDBStorage(settings.optuna_url),
        study_name=settings.name,
    )
    scheduler = make_scheduler(
        settings.scheduler,
        metrics=space.metrics,
        modes=space.modes,
        max_t=max_final_step(space),
        study_dir=study_dir,
    )
    tracker = StudyTracker(
        tracking_uri=settings.tracking_uri,
        experiment_name=settings.experiment_name,
        study_name=settings.name,
        study_id=settings.study_id,
        study_dir=study_dir,
        metrics=space.metrics,
        modes=space.modes,
        scheduler=settings.scheduler,
        params={
            "space": settings.space,
            **sampler_plan.params(),
            "seed": settings.seed,
            "num_samples": settings.num_samples,
            "scheduler": settings.scheduler,
            **{key: "|".join(map(str, space_values(space, key))) for key in ("dataset", "arch", "weights")},
            "cpus_per_trial": settings.cpus_per_trial,
            "gpus_per_trial": settings.gpus_per_trial,
            "max_concurrent": max_concurrent,
            "smoke": settings.smoke,
            "objectives": ",".join(f"{m}:{mode}" for m, mode in zip(space.metrics, space.modes, strict=True)),
            **{f"constraint_{key}": value for key, value in space.constraints.spec().items()},
            **{f"start_point_{index}": json.dumps(dict(point)) for index, point in enumerate(space.start_points)},
        },
        tags={**_versions(), "space": settings.space, "mlflow.note.content": space.description},
        defaults=ExperimentConfig().to_flat(),
        constraints=space.constraints,
        register_model=settings.register_model,
    )
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=StudySearch(searcher, max_concurrent=max_concurrent, num_samples=settings.num_samples),
            scheduler=scheduler,
            num_samples=settings.num_samples,
            trial_name_creator=trial_name,
            trial_dirname_creator=trial_dirname,
            # A trial's process imports torch, zennit and torch-pruning and loads the data: seconds that a reused
            # actor pays once per worker instead of once per trial.
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=settings.name,
            storage_path=settings.storage_path,
            # The snapshots after the tracker: Tune calls callbacks in order, so a snapshot holds what MLflow got;
            # the heap frozen last, once the others have set up (study.driver_heap).
            callbacks=[tracker, snapshots(settings), FrozenHeap()],
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            failure_config=tune.FailureConfig(max_failures=settings.max_failures),
            verbose=1,
        ),
    )
    write_manifest(settings)  # last: a directory without it is not resumable, and says so
    return tuner


def snapshots(settings: StudySettings) -> Any:
    """The callback that snapshots the driver's state beside the trials (``study.driver_state``): the SQLite stores
    that are local files (the Optuna db, the MLflow store), the manifest, the study's space and MOASHA's rung journal
    (its rung records: Ray does not keep a scheduler across --resume)."""
    from study.schedulers import MOASHA_JOURNAL
    from study.snapshots import DriverStateSnapshots
    from study.sqlite_files import sqlite_path

    databases = {
        name: sqlite_path(url)
        for name, url in ((OPTUNA_DB, settings.optuna_url), (MLFLOW_DB, settings.tracking_uri))
        if sqlite_path(url) is not None
    }
    files = {name: settings.study_dir / name for name in (MANIFEST, f"{settings.space}.toml", MOASHA_JOURNAL)}
    return DriverStateSnapshots(settings.snapshot_location, databases=databases, files=files)


def ui_lines(tracking_uri: str, experiment_name: str, front: pd.DataFrame | None = None) -> list[str]:
    """Where to see the study in the MLflow UI: the command for a local store, the exact URLs (model-training
    mode, the experiment's id) of the runs and of the front's logged models; then the URI of each ``front``
    member's logged model (its ``run_id`` and ``step``), and how to load one."""
    from mlflow import MlflowClient

    from study.logged_models import model_uri, step_models
    from study.mlflow_experiment import is_local_store, models_url, runs_url, ui_base

    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name(experiment_name)
    lines = []
    if is_local_store(tracking_uri):
        lines.append(f"mlflow:  mlflow ui --backend-store-uri {tracking_uri} --host 127.0.0.1 --port 5000")
    if experiment is None:
        return [*lines, f"         (no experiment {experiment_name!r} in {tracking_uri} yet)"]
    base = ui_base(tracking_uri)
    lines.append(f"runs:    {runs_url(base, experiment.experiment_id)}   (experiment {experiment_name!r})")
    lines.append(f"models:  {models_url(base, experiment.experiment_id)}")
    if front is None or not len(front):
        return lines
    models = step_models(client, experiment.experiment_id)
    uris = []
    for point in front.to_dict("records"):
        model = models.get((point["run_id"], int(point["step"])))
        uris.append(model_uri(model.model_id) if model is not None else "(no logged model)")
        lines.append(f"         {point['run_name']} step {int(point['step'])}: {uris[-1]}")
    loadable = [uri for uri in uris if uri.startswith("models:/")]
    if loadable:
        lines.append(
            f'load:    import mlflow.pytorch; mlflow.set_tracking_uri("{tracking_uri}"); '
            f'model = mlflow.pytorch.load_model("{loadable[-1]}")'
        )
    return lines


def summarize(settings: StudySettings, space: SearchSpace, *, seconds: float, first_error: str | None = None) -> int:
    """Print the front and where to look; the exit status: 130 when interrupted, 1 when every trial failed
    (``outcome.failures_verdict``; the line says how many failed, and the first reason), else 0."""
    import optuna
    import pandas as pd

    from study.pareto import front_text
    from study.searcher import REASON_ATTRS

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=settings.name, storage=settings.optuna_url)
    trials = study.get_trials(deepcopy=False)
    states = [trial.state.name for trial in trials]
    counts = {state: states.count(state) for state in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")}
    interrupted = counts["RUNNING"] > 0 or len(states) < settings.num_samples
    print()
    print(
        f"study {settings.name!r}: {len(states)} of {settings.num_samples} trials, {counts['COMPLETE']} complete, "
        f"{counts['PRUNED']} pruned, {counts['FAIL']} failed, {counts['RUNNING']} unfinished ({seconds:.0f}s)"
    )
    front_csv = settings.study_dir / "pareto_front.csv"
    front = pd.read_csv(front_csv) if front_csv.is_file() else pd.DataFrame()
    objectives = ", ".join(f"{m} ({mode})" for m, mode in zip(space.metrics, space.modes, strict=True))
    if len(front):
        print(f"Pareto front over the completed trials' final values of {objectives}:")
        print(front_text(front, front, space.metrics))
    else:
        print(f"no trial completed: no Pareto front of {objectives} yet")
    store = settings.tracking_uri
    print()
    print(f"files:   {settings.study_dir}/pareto_front.{{csv,html,png}}, pareto_front_steps.csv")
    for line in ui_lines(store, settings.experiment_name, front):
        print(line)
    print(f"report:  python -m study.report --tracking-uri {store} --experiment-name {settings.experiment_name}")
    if interrupted:
        print(
            f"resume:  python -m study.tune --name {settings.name} --storage-path {settings.storage_path} --resume",
            file=sys.stderr,
        )
        return INTERRUPTED
    failed = [trial for trial in trials if trial.state.name == "FAIL"]
    # A trial that raised is told to Optuna without its exception; Tune's result grid has it.
    reason = first_error or (failed[0].user_attrs.get(REASON_ATTRS[FAILED]) if failed else None)
    status, line = failures_verdict(len(trials), len(failed), reason)
    if line:
        print(
            f"{'error: ' if status else ''}study {settings.name!r}: {line}", file=sys.stderr if status else sys.stdout
        )
    return status
