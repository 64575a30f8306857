"""``python -m study.tune``: a multi-objective hyperparameter study of the ``spa`` experiment.

Ray Tune runs the trials (``study.trainable``), Optuna proposes them (``study.searcher``; the Optuna study is kept
in ``<storage-path>/<name>/optuna.db``), MLflow records them (``study.tracking``): a parent run per study, a
child run per trial, and the Pareto front over the completed trials, rewritten as trials finish.

With no flags but ``--space`` it runs on the embedded digits task, offline, on the CPUs of this machine.
``--smoke`` is the smallest meaningful study (2 trials, one epoch, one pruning step). A study stopped by Ctrl-C
or a killed driver continues with the same command plus ``--resume``.

This module is the command line only: ``study.settings`` checks the flags and makes the settings, ``study.plan``
resolves the space and checks what depends on it, ``study.run`` runs the study.

Everything the user typed is checked before Ray is imported or anything is written: a bad input is one line on
stderr and exit status 2, with no study directory and no MLflow experiment left behind.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from spa.config import PRETRAINED_DIGITS, ConfigError
from study.names import DEFAULT_TRACKING_URI
from study.plan import plan
from study.preflight import PreflightError
from study.run import INTERRUPTED, run_study
from study.schedulers import SCHEDULER_HELP
from study.settings import (
    DEFAULT_NUM_SAMPLES,
    DEFAULT_STORAGE_PATH,
    SAMPLERS,
    SCHEDULERS,
    SMOKE_BUDGET,
    SMOKE_NUM_SAMPLES,
    UsageError,
)
from study.spaces import SpaceError, list_spaces, load_space

__all__ = ["build_parser", "main"]


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
        "--sampler",
        choices=SAMPLERS,
        default=None,
        help="Optuna sampler: TPE, NSGA-II, GP (Gaussian process, for small, expensive studies) or random, each "
        "sized to --num-samples; the study prints the settings (default: tpe)",
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
        f"{', '.join(f'{k}={v}' for k, v in SMOKE_BUDGET.items())}, and no constraints (default: off)",
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
        help=f"{PRETRAINED_DIGITS} (trained once before the trials, cached), imagenet, none or a state-dict file "
        f"(default: the space's, e.g. {PRETRAINED_DIGITS})",
    )
    task.add_argument(
        "--cache-dir", default=None, help="cache of pretrained backbones (default: $SPA_CACHE_DIR or ~/.cache/spa)"
    )

    resources = parser.add_argument_group("resources")
    resources.add_argument(
        "--cpus-per-trial", type=int, default=None, help="CPUs (and torch threads) per trial (default: 1)"
    )
    resources.add_argument(
        "--gpus-per-trial",
        type=float,
        default=None,
        help="GPUs per trial: 0, whole, or 1/k for k trials sharing a GPU, e.g. 0.5 (default: 0)",
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
    where.add_argument(
        "--optuna-storage",
        default=None,
        metavar="URL",
        help="the Optuna study's database, an RDB URL such as postgresql://user:password@host/optuna or "
        "sqlite:////abs/optuna.db (default: optuna.db in the study directory, snapshotted beside the trials)",
    )
    where.add_argument(
        "--register-model",
        default=None,
        metavar="NAME",
        help="register the front's logged models as versions of the registered model NAME, with aliases "
        "best-accuracy, fewest-learned-params and knee kept on the current front (default: off)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.list_spaces:
        names = list_spaces()
        width = max(map(len, names), default=0)  # every description starts in one column
        for name in names:
            try:
                description = load_space(name).description
            except SpaceError as error:
                description = f"(unusable: {error})"
            print(f"{name:<{width}}  {description}")
        return 0
    try:
        settings, space = plan(args)
    except (UsageError, SpaceError, ConfigError, PreflightError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        return run_study(settings, space, resume=args.resume, address=args.address)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return INTERRUPTED


if __name__ == "__main__":
    raise SystemExit(main())
