"""``python -m study.tune``: a multi-objective hyperparameter study of the ``spa`` experiment.

Ray Tune runs the trials (``study.trainable``), Optuna proposes them (``study.searcher``; the Optuna study is kept
in ``<storage-path>/<name>/optuna.db``), MLflow records them (``study.tracking``): a parent run per study, a
child run per trial, and the Pareto front over the completed trials, rewritten as trials finish.

With no flags but ``--space`` it runs on the embedded digits task, offline, on the CPUs of this machine.
``--smoke`` is the smallest meaningful study (2 trials, one epoch, one pruning step). A study stopped by Ctrl-C
or a killed driver continues with the same command plus ``--resume``.

Everything the user typed is checked before Ray is imported or anything is written: a bad input is one line on
stderr and exit status 2, with no study directory and no MLflow experiment left behind.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from spa.config import ConfigError, ExperimentConfig
from study.scheduling import SCHEDULER_HELP, SCHEDULERS, STOPPING
from study.spaces import SearchSpace, SpaceError, list_spaces, load_space

__all__ = ["build_parser", "main", "StudySettings", "UsageError", "SMOKE_BUDGET", "DEFAULT_NUM_SAMPLES"]

DEFAULT_NUM_SAMPLES = 8
SMOKE_NUM_SAMPLES = 2
# The smallest budget that still trains, prunes once, recovers and measures.
SMOKE_BUDGET = {"epochs": 1, "recovery_epochs": 1, "steps": 1, "max_score_batches": 2, "batch_size": 64}
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
DEFAULT_STORAGE_PATH = "ray_results"
SAMPLERS = ("tpe", "nsga2", "gp", "random")  # study.searcher.make_sampler builds each
MANIFEST = "study.json"
INTERRUPTED = 130  # the shell's status for Ctrl-C


class UsageError(ValueError):
    """Bad input to the command; one line."""


# --- settings ------------------------------------------------------------------------------------------------------


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

    @property
    def study_dir(self) -> Path:
        """Where the driver keeps the study's own state (Optuna db, manifest, fronts): a local directory."""
        return _study_dir(self.storage_path, self.name, self.cache_dir)

    @property
    def trial_storage(self) -> str:
        """Where Tune keeps trial results and checkpoints: the study directory, or ``URI/name`` for a URI."""
        return f"{self.storage_path.rstrip('/')}/{self.name}" if _is_uri(self.storage_path) else str(self.study_dir)

    def overrides(self, space: SearchSpace) -> dict[str, Any]:
        """The fixed settings the command pins in every trial of ``space``."""
        pinned: dict[str, Any] = {}
        for key in ("dataset", "data_dir", "arch", "weights"):
            if getattr(self, key) is not None:
                pinned[key] = getattr(self, key)
        if self.smoke:
            pinned.update(SMOKE_BUDGET)
            if "densities" in space.fixed or any(param.name == "densities" for param in space.params):
                pinned["densities"] = None  # an explicit schedule would override the one smoke step
        # One torch thread per CPU Tune gives the trial, so concurrent trials do not oversubscribe the cores.
        pinned["threads"] = self.cpus_per_trial
        pinned["device"] = "cuda" if self.gpus_per_trial > 0 else "cpu"
        pinned["cache_dir"] = self.cache_dir
        return pinned


# The flags that may differ from the study's on --resume (the rest must match or be left out).
_RESUME_MAY_CHANGE = ("num_samples",)


def _absolute(path: str | os.PathLike[str]) -> str:
    return str(Path(path).expanduser().resolve())


def _is_uri(storage_path: str) -> bool:
    return "://" in storage_path


def _storage_path(text: str) -> str:
    """A local or NFS path made absolute; a URI (``s3://bucket/dir``, ``gs://``, ...) kept as it is."""
    return text if _is_uri(text) else _absolute(text)


def _cache_dir(args: argparse.Namespace) -> str:
    from spa.pretrain import default_cache_dir

    return _absolute(args.cache_dir) if args.cache_dir else str(default_cache_dir())


def _study_dir(storage_path: str, name: str, cache_dir: str) -> Path:
    # SQLite (the Optuna study) cannot live on object storage: with a URI the driver's state stays on the driver's
    # machine, under the cache directory, while trials write their results and checkpoints to the URI.
    if _is_uri(storage_path):
        return Path(cache_dir) / "studies" / name
    return Path(storage_path) / name


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


def _new_settings(args: argparse.Namespace, space: SearchSpace) -> StudySettings:
    name = args.name or (f"{space.name}-smoke" if args.smoke else space.name)
    weights = args.weights
    if weights is not None and weights not in ("imagenet", "none", "pretrained-digits"):
        if not Path(weights).expanduser().is_file():
            raise UsageError(f"--weights {weights!r} is not a file nor one of imagenet, none, pretrained-digits")
        weights = _absolute(weights)
    if args.data_dir is not None and not Path(args.data_dir).expanduser().is_dir():
        raise UsageError(f"--data-dir {args.data_dir!r} does not exist; create it or pass another")
    return StudySettings(
        space=space.name,
        name=name,
        storage_path=_storage_path(args.storage_path or DEFAULT_STORAGE_PATH),
        num_samples=args.num_samples or (SMOKE_NUM_SAMPLES if args.smoke else DEFAULT_NUM_SAMPLES),
        max_concurrent=args.max_concurrent,
        cpus_per_trial=1 if args.cpus_per_trial is None else args.cpus_per_trial,
        gpus_per_trial=0.0 if args.gpus_per_trial is None else float(args.gpus_per_trial),
        sampler=args.sampler or "tpe",
        seed=0 if args.seed is None else args.seed,
        scheduler=args.scheduler or "fifo",
        dataset=args.dataset,
        data_dir=None if args.data_dir is None else _absolute(args.data_dir),
        arch=args.arch,
        weights=weights,
        cache_dir=_cache_dir(args),
        tracking_uri=_tracking_uri(args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI),
        experiment_name=args.experiment_name or name,
        smoke=args.smoke,
        study_id=uuid.uuid4().hex,
    )


def _resumed_settings(args: argparse.Namespace, study_dir: Path) -> StudySettings:
    """The study's own settings; a flag given now must agree with them (only ``--num-samples`` may grow)."""
    manifest = study_dir / MANIFEST
    remote = _is_uri(_storage_path(args.storage_path or DEFAULT_STORAGE_PATH))
    if not manifest.is_file() or not (remote or (study_dir / "tuner.pkl").is_file()):
        if not study_dir.exists():
            raise UsageError(f"--resume: no study at {study_dir}; run without --resume to start it")
        raise UsageError(f"--resume: {study_dir} holds no resumable study (no {MANIFEST} or tuner.pkl)")
    try:
        settings = StudySettings(**json.loads(manifest.read_text()))
    except (ValueError, TypeError) as error:
        raise UsageError(f"--resume: {manifest} is unreadable: {error}") from None
    given: dict[str, Any] = {
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
        "weights": args.weights
        if args.weights in (None, "imagenet", "none", "pretrained-digits")
        else _absolute(args.weights),
        "cache_dir": None if args.cache_dir is None else _absolute(args.cache_dir),
        "tracking_uri": None if args.tracking_uri is None else _tracking_uri(args.tracking_uri),
        "experiment_name": args.experiment_name,
        "smoke": args.smoke or None,
    }
    if args.space is not None:
        given["space"] = _space_name(args.space)
    for key, value in given.items():
        study_value = getattr(settings, key)
        if value is None or value == study_value:
            continue
        if key == "num_samples" and value >= settings.num_samples:
            continue
        flag = "--" + key.replace("_", "-")
        if key == "num_samples":
            raise UsageError(f"--resume: {flag} {value} is below the study's {study_value}; a study only grows")
        raise UsageError(
            f"--resume: {flag} {value} differs from the study's {study_value}; leave it out to resume, "
            "or start a new study with another --name"
        )
    if args.num_samples is not None:
        settings = dataclasses.replace(settings, num_samples=args.num_samples)
    return settings


def _space_name(text: str) -> str:
    return load_space(text).name


def _plan(args: argparse.Namespace) -> tuple[StudySettings, SearchSpace]:
    """Resolve and check everything before anything starts: the settings and the space every trial gets."""
    if args.space is None and not (args.resume and args.name):
        raise UsageError("--space is required (or --resume with --name); see --list-spaces")
    if args.name is not None and (not args.name.strip() or "/" in args.name or args.name in (".", "..")):
        raise UsageError(f"--name {args.name!r} is not allowed; allowed: a plain directory name")
    for flag, value, low in (
        ("--num-samples", args.num_samples, 1),
        ("--max-concurrent", args.max_concurrent, 1),
        ("--cpus-per-trial", args.cpus_per_trial, 1),
        ("--seed", args.seed, 0),
    ):
        if value is not None and value < low:
            raise UsageError(f"{flag} {value} is not allowed; allowed: an integer >= {low}")
    if args.gpus_per_trial is not None and not args.gpus_per_trial >= 0:
        raise UsageError(f"--gpus-per-trial {args.gpus_per_trial} is not allowed; allowed: a number >= 0")

    if args.resume:
        name = args.name or (f"{_space_name(args.space)}-smoke" if args.smoke else _space_name(args.space))
        study_dir = _study_dir(_storage_path(args.storage_path or DEFAULT_STORAGE_PATH), name, _cache_dir(args))
        settings = _resumed_settings(args, study_dir)
        space = load_space(study_dir / f"{settings.space}.toml")  # the study's copy, as it started
    else:
        space = load_space(args.space)
        settings = _new_settings(args, space)
        if settings.study_dir.exists():
            raise UsageError(
                f"a study named {settings.name!r} exists at {settings.study_dir}; "
                "pass --resume to continue it, or another --name"
            )
    space = space.with_overrides(settings.overrides(space))
    if settings.scheduler in STOPPING and _max_final_step(space) < 1:
        raise UsageError(
            f"--scheduler {settings.scheduler} stops trials at pruning steps, but this space prunes no step"
        )
    _check_datasets(space)
    return settings, space


def _values(space: SearchSpace, key: str) -> list[Any]:
    """Every value ``key`` can take in a trial of ``space``."""
    for param in space.params:
        if param.name == key:
            return list(param.choices) if param.kind == "categorical" else [param.low, param.high]
    if key in space.fixed:
        return [space.fixed[key]]
    return [ExperimentConfig().to_flat()[key]]


def _max_final_step(space: SearchSpace) -> int:
    """The last pruning step any trial can reach (ASHA's max_t)."""
    densities = _values(space, "densities")
    if any(value is not None for value in densities):
        return max(len(value) for value in densities if value is not None)
    return int(max(_values(space, "steps")))


def _check_datasets(space: SearchSpace) -> None:
    """A dataset a trial cannot load is bad input, found now rather than in every trial."""
    from spa.data import DataError, load_splits

    data_dir = _values(space, "data_dir")[0]
    for dataset in _values(space, "dataset"):
        if dataset in ("digits", "digits-source"):
            continue  # embedded: always there
        try:
            load_splits(dataset, data_dir=data_dir, download=False)
        except DataError as error:
            raise UsageError(str(error)) from None


# --- the command ---------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m study.tune",
        description="Run a multi-objective hyperparameter study of structured-pruning adapters: Ray Tune runs "
        "the trials, Optuna proposes them, MLflow records them and the Pareto front.",
        epilog="Example: python -m study.tune --space splora_lrp --smoke",
    )
    what = parser.add_argument_group("what to search")
    what.add_argument(
        "--space", default=None, help="a search space: a name from --list-spaces or a path to a .toml file"
    )
    what.add_argument("--list-spaces", action="store_true", help="list the search spaces and exit")
    what.add_argument(
        "--num-samples",
        type=int,
        default=None,
        help=f"trials in the study (default: {DEFAULT_NUM_SAMPLES}; {SMOKE_NUM_SAMPLES} with --smoke); "
        "with --resume, a larger number extends the study",
    )
    what.add_argument(
        "--sampler", choices=SAMPLERS, default=None, help="Optuna sampler: TPE, NSGA-II, GP or random (default: tpe)"
    )
    what.add_argument("--seed", type=int, default=None, help="seed of the sampler (default: 0)")
    what.add_argument(
        "--scheduler",
        choices=SCHEDULERS,
        default=None,
        help=SCHEDULER_HELP,
    )
    what.add_argument(
        "--smoke",
        action="store_true",
        help=f"smallest meaningful study: {SMOKE_NUM_SAMPLES} trials unless --num-samples, and "
        f"{', '.join(f'{k}={v}' for k, v in SMOKE_BUDGET.items())} (default: off)",
    )

    task = parser.add_argument_group("the task (default: the space's own settings, the embedded digits task)")
    task.add_argument("--dataset", default=None, help="dataset of every trial (default: the space's, e.g. digits)")
    task.add_argument(
        "--data-dir",
        default=None,
        help="where torchvision datasets live; must exist (default: $SPA_DATA_DIR or ~/.cache/spa/data)",
    )
    task.add_argument(
        "--arch", default=None, help="resnet18, resnet34 or resnet50 (default: the space's, e.g. resnet18)"
    )
    task.add_argument(
        "--weights",
        default=None,
        help="pretrained-digits (trained once before the trials, cached), imagenet, none or a state-dict file "
        "(default: the space's, e.g. pretrained-digits)",
    )
    task.add_argument(
        "--cache-dir", default=None, help="cache of pretrained backbones (default: $SPA_CACHE_DIR or ~/.cache/spa)"
    )

    resources = parser.add_argument_group("resources")
    resources.add_argument(
        "--cpus-per-trial", type=int, default=None, help="CPUs (and torch threads) per trial (default: 1)"
    )
    resources.add_argument(
        "--gpus-per-trial", type=float, default=None, help="GPUs per trial, may be fractional (default: 0)"
    )
    resources.add_argument(
        "--max-concurrent",
        type=int,
        default=None,
        help="trials running at once (default: as many as the cluster's CPUs and GPUs allow)",
    )
    resources.add_argument(
        "--address",
        default=None,
        help="Ray cluster to connect to, e.g. auto (default: $RAY_ADDRESS if set, else a local Ray on this machine)",
    )
    resources.add_argument(
        "--max-failures",
        type=int,
        default=None,
        help="retries of a trial whose node died or that raised; a retry continues from the trial's last pruning-step "
        "checkpoint (default: 3 on a cluster given by --address or $RAY_ADDRESS, 0 on a local Ray)",
    )

    where = parser.add_argument_group("where results go")
    where.add_argument(
        "--storage-path",
        default=None,
        help="where trial results and checkpoints go, as STORAGE_PATH/NAME: a local or NFS path, or a URI such as "
        "s3://bucket/dir (then the driver's own state, the Optuna db and fronts, stays in CACHE_DIR/studies/NAME) "
        f"(default: ./{DEFAULT_STORAGE_PATH})",
    )
    where.add_argument("--name", default=None, help="study name (default: the space's name, plus -smoke with --smoke)")
    where.add_argument(
        "--resume",
        action="store_true",
        help="continue the study NAME after Ctrl-C or a killed driver: finished trials stay, interrupted ones "
        "continue from their last pruning step (default: off; without it an existing NAME is an error)",
    )
    where.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow tracking URI; the file store is refused "
        f"(default: $MLFLOW_TRACKING_URI, else {DEFAULT_TRACKING_URI} in the working directory)",
    )
    where.add_argument("--experiment-name", default=None, help="MLflow experiment (default: the study name)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.list_spaces:
        for name in list_spaces():
            try:
                description = load_space(name).description
            except SpaceError as error:
                description = f"(unusable: {error})"
            print(f"{name:<20} {description}")
        return 0
    try:
        settings, space = _plan(args)
    except (UsageError, SpaceError, ConfigError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        if args.max_failures is not None and args.max_failures < 0:
            raise UsageError(f"--max-failures {args.max_failures} is not allowed; allowed: an integer >= 0")
        max_failures = args.max_failures
        if max_failures is None:
            max_failures = 3 if (args.address or os.environ.get("RAY_ADDRESS")) else 0
        return _run(settings, space, resume=args.resume, address=args.address, max_failures=max_failures)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return INTERRUPTED


def _run(settings: StudySettings, space: SearchSpace, *, resume: bool, address: str | None, max_failures: int) -> int:
    started = time.perf_counter()
    ray, started_ray = _connect(address)
    try:
        nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
        max_concurrent = _check_resources(nodes, settings)
        _pretrain(space, settings)
        tuner = _tuner(settings, space, max_concurrent, resume=resume, max_failures=max_failures)
        tuner.fit()
    finally:
        if started_ray:
            ray.shutdown()
    return _summarize(settings, space, seconds=time.perf_counter() - started)


def _connect(address: str | None) -> tuple[Any, bool]:
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
    if address or os.environ.get("RAY_ADDRESS"):
        try:
            ray.init(address=address, logging_level=logging.WARNING)
        except ConnectionError as error:
            raise UsageError(f"--address {address or os.environ['RAY_ADDRESS']}: {error}") from None
    else:
        ray.init(include_dashboard=False, logging_level=logging.WARNING)
    return ray, True


def _check_resources(nodes: Sequence[dict[str, float]], settings: StudySettings) -> int:
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


def _pretrain(space: SearchSpace, settings: StudySettings) -> None:
    """Train the digits backbone once, here, before trials start: trials never race to train it."""
    if "pretrained-digits" not in _values(space, "weights"):
        return
    from spa.pretrain import PretrainConfig, pretrained_backbone

    for arch in sorted(set(_values(space, "arch"))):
        began = time.perf_counter()
        path = pretrained_backbone(PretrainConfig(arch=arch), settings.cache_dir)
        print(f"backbone {arch} pretrained on digits 0-4: {path} ({time.perf_counter() - began:.0f}s)", flush=True)


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


def _tuner(settings: StudySettings, space: SearchSpace, max_concurrent: int, *, resume: bool, max_failures: int) -> Any:
    from ray import tune

    from study.scheduling import make_scheduler
    from study.trainable import run_trial, trial_dirname, trial_name

    trainable = tune.with_resources(run_trial, {"cpu": settings.cpus_per_trial, "gpu": settings.gpus_per_trial})
    study_dir = settings.study_dir
    if resume:
        tuner = tune.Tuner.restore(
            settings.trial_storage,
            trainable=trainable,
            resume_unfinished=True,
            resume_errored=False,
            restart_errored=False,
        )
        # Tune restores the sample count of the first run; a larger --num-samples extends the study. Ray 2.60 has
        # no public handle on the restored search algorithm (it is unpickled from tuner.pkl), hence this one line.
        tuner._local_tuner._tune_config.search_alg.num_samples = settings.num_samples
        _write_manifest(settings)
        return tuner

    import optuna

    from study.sampler_plan import build_sampler, plan_sampler
    from study.searcher import StudySearch, StudySearcher
    from study.tracking import StudyTracker

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study_dir.mkdir(parents=True)
    shutil.copyfile(space.path, study_dir / f"{settings.space}.toml")
    plan = plan_sampler(
        settings.sampler,
        num_samples=settings.num_samples,
        num_params=len(space.params),
        max_concurrent=max_concurrent,
    )
    print(f"sampler: {plan.header()}", flush=True)
    searcher = StudySearcher(
        space,
        sampler=build_sampler(plan, settings.seed),
        storage=optuna.storages.RDBStorage(f"sqlite:///{study_dir / 'optuna.db'}"),
        study_name=settings.name,
    )
    scheduler = make_scheduler(
        settings.scheduler,
        metrics=space.metrics,
        modes=space.modes,
        max_t=_max_final_step(space),
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
            **plan.params(),
            "seed": settings.seed,
            "num_samples": settings.num_samples,
            "scheduler": settings.scheduler,
            **{key: "|".join(map(str, _values(space, key))) for key in ("dataset", "arch", "weights")},
            "cpus_per_trial": settings.cpus_per_trial,
            "gpus_per_trial": settings.gpus_per_trial,
            "max_concurrent": max_concurrent,
            "smoke": settings.smoke,
            "objectives": ",".join(f"{m}:{mode}" for m, mode in zip(space.metrics, space.modes, strict=True)),
        },
        tags={**_versions(), "space": settings.space, "mlflow.note.content": space.description},
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
            callbacks=[tracker],
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            failure_config=tune.FailureConfig(max_failures=max_failures),
            verbose=1,
        ),
    )
    _write_manifest(settings)  # last: a directory without it is not resumable, and says so
    return tuner


def _write_manifest(settings: StudySettings) -> None:
    from study.pareto import write_atomically

    text = json.dumps(dataclasses.asdict(settings), indent=2) + "\n"
    write_atomically(settings.study_dir / MANIFEST, lambda path: path.write_text(text))


def _summarize(settings: StudySettings, space: SearchSpace, *, seconds: float) -> int:
    """Print the front and where to look; the exit status: 0 when every trial ended, 130 when interrupted."""
    import optuna
    import pandas as pd

    from study.report import front_text

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=settings.name, storage=f"sqlite:///{settings.study_dir / 'optuna.db'}")
    states = [trial.state.name for trial in study.get_trials(deepcopy=False)]
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
    print(
        f"mlflow:  mlflow ui --backend-store-uri {store} --host 127.0.0.1   (experiment {settings.experiment_name!r})"
    )
    print(f"report:  python -m study.report --tracking-uri {store} --experiment-name {settings.experiment_name}")
    if interrupted:
        print(
            f"resume:  python -m study.tune --name {settings.name} --storage-path {settings.storage_path} --resume",
            file=sys.stderr,
        )
        return INTERRUPTED
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
