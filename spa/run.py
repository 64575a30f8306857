"""``python -m spa.run``: one train -> prune -> recover experiment, with the original experiment script's flags.

With no flags it fine-prunes a ResNet-18 (pretrained on digits 0-4) on the embedded digits 5-9 task.
Prints one table row per pruning step and, with ``--csv``, writes the same rows as CSV.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from spa.config import (
    CRITERIA_NAMES,
    LR_SCHEDULES,
    OPTIMIZERS,
    SCHEDULE_SHAPES,
    DataConfig,
    ExperimentConfig,
    LearnerConfig,
    ModelConfig,
    OptimConfig,
    PruneConfig,
    RuntimeConfig,
)
from spa.data import dataset_names
from spa.metrics import METRIC_NAMES as CSV_COLUMNS
from spa.models import ARCHITECTURES

__all__ = ["build_parser", "config_from_args", "main"]


def _density_list(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m spa.run",
        description="Train a pretrained ResNet on a target task, then prune it step by step with recovery "
        "training, measuring accuracy, learned parameters and FLOPs after every step.",
    )
    what = parser.add_argument_group("what to run (the original script's flags)")
    what.add_argument(
        "--train", action="store_true", help="train on the target task first (default: on, unless only --prune)"
    )
    what.add_argument("--prune", action="store_true", help="prune step by step (default: on, unless only --train)")
    what.add_argument(
        "--splora", action="store_true", help="learn SPLoRA adapters instead of fine-pruning (default: off)"
    )
    what.add_argument("--splora-rank", type=int, default=8, help="SPLoRA rank (default: 8)")
    what.add_argument("--splora-init-range", type=float, default=1e-3, help="SPLoRA B init range (default: 1e-3)")
    what.add_argument("--method-type", choices=CRITERIA_NAMES, default="lrp", help="pruning criterion (default: lrp)")
    what.add_argument(
        "--norm",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="per-layer score normalisation before global ranking (default: on)",
    )
    what.add_argument(
        "--arch", choices=list(ARCHITECTURES), default="resnet18", help="architecture (default: resnet18)"
    )
    what.add_argument(
        "--dataset",
        default="digits",
        help=f"dataset: {', '.join(dataset_names())} or imagefolder:PATH (default: digits, embedded and offline)",
    )
    what.add_argument("--lr", type=float, default=0.01, help="learning rate (default: 0.01)")
    what.add_argument("--batch-size", type=int, default=32, help="batch size (default: 32)")
    what.add_argument(
        "--epochs",
        type=int,
        default=OptimConfig.epochs,
        help=f"training epochs before pruning (default: {OptimConfig.epochs})",
    )
    what.add_argument("--recovery-epochs", type=int, default=1, help="recovery epochs after each step (default: 1)")
    what.add_argument("--seed", type=int, default=0, help="random seed, set before anything is built (default: 0)")

    ours = parser.add_argument_group("schedule, data and runtime")
    ours.add_argument("--final-density", type=float, default=0.3, help="density after the last step (default: 0.3)")
    ours.add_argument("--steps", type=int, default=3, help="number of pruning steps (default: 3)")
    ours.add_argument("--schedule-shape", choices=SCHEDULE_SHAPES, default="geometric", help="(default: geometric)")
    ours.add_argument(
        "--densities",
        type=_density_list,
        default=None,
        help="explicit schedule, e.g. 0.8,0.5,0.3 (overrides --final-density/--steps; default: none)",
    )
    ours.add_argument("--optimizer", choices=OPTIMIZERS, default="sgd", help="(default: sgd, momentum 0.9)")
    ours.add_argument("--weight-decay", type=float, default=5e-4, help="(default: 5e-4)")
    ours.add_argument(
        "--lr-schedule",
        choices=LR_SCHEDULES,
        default=OptimConfig.lr_schedule,
        help=f"(default: {OptimConfig.lr_schedule}; step is the reference's StepLR(epochs // 4, gamma 0.2))",
    )
    ours.add_argument(
        "--weights",
        default="pretrained-digits",
        help="imagenet, none, pretrained-digits (a backbone pretrained on digits 0-4, cached) or a state-dict path "
        "(default: pretrained-digits)",
    )
    ours.add_argument(
        "--data-dir", default=None, help="where torchvision datasets live (default: $SPA_DATA_DIR or ~/.cache/spa/data)"
    )
    ours.add_argument(
        "--download", action="store_true", help="allow torchvision to download the dataset (default: off)"
    )
    ours.add_argument(
        "--val-fraction", type=float, default=0.1, help="share of training data held out as val (default: 0.1)"
    )
    ours.add_argument(
        "--max-score-batches", type=int, default=None, help="batches used to score channels (default: all)"
    )
    ours.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    ours.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ours.add_argument("--bf16", action="store_true", help="bf16 autocast on CUDA (default: off)")
    ours.add_argument("--deterministic", action="store_true", help="deterministic algorithms (default: off)")
    ours.add_argument("--num-workers", type=int, default=0, help="data loader workers (default: 0)")
    ours.add_argument("--cache-dir", default=None, help="cache for pretrained backbones (default: ~/.cache/spa)")
    ours.add_argument("--csv", type=Path, default=None, help="also write the table as CSV to this path (default: none)")
    ours.add_argument("--quiet", action="store_true", help="no progress lines on stderr (default: off)")
    return parser


def config_from_args(args: argparse.Namespace) -> ExperimentConfig:
    train, prune = args.train, args.prune
    if not train and not prune:
        train = prune = True
    return ExperimentConfig(
        data=DataConfig(
            dataset=args.dataset,
            data_dir=args.data_dir,
            download=args.download,
            val_fraction=args.val_fraction,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
        ),
        model=ModelConfig(arch=args.arch, weights=args.weights),
        learner=LearnerConfig(
            learner="splora" if args.splora else "finetune", rank=args.splora_rank, init_range=args.splora_init_range
        ),
        optim=OptimConfig(
            optimizer=args.optimizer,
            lr=args.lr,
            weight_decay=args.weight_decay,
            lr_schedule=args.lr_schedule,
            epochs=args.epochs if train else 0,
            recovery_epochs=args.recovery_epochs,
        ),
        prune=PruneConfig(
            criterion=args.method_type,
            norm=args.norm,
            final_density=args.final_density,
            steps=args.steps if prune else 0,
            shape=args.schedule_shape,
            densities=args.densities if prune else None,
            max_score_batches=args.max_score_batches,
        ),
        runtime=RuntimeConfig(
            seed=args.seed,
            device=args.device,
            threads=args.threads,
            bf16=args.bf16,
            deterministic=args.deterministic,
            cache_dir=args.cache_dir,
        ),
    )


def write_csv(path: Path, rows: Sequence[dict[str, float]]) -> None:
    """Write atomically: a crash never leaves a half-written CSV behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", newline="", dir=path.parent, delete=False, suffix=".partial") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(handle.name, path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # Heavy imports after argument parsing: --help and bad flags answer at once.
    from spa.experiment import NonFiniteLossError, metrics_table, run_experiment

    try:
        config = config_from_args(args)
        if args.data_dir is not None and not Path(args.data_dir).is_dir() and not args.download:
            raise ValueError(f"--data-dir {args.data_dir!r} does not exist; create it or pass --download")
        started = time.perf_counter()
        log = None if args.quiet else (lambda message: print(message, file=sys.stderr, flush=True))
        rows = run_experiment(config, log=log)
    except NonFiniteLossError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {str(error).splitlines()[0]}", file=sys.stderr)
        return 2
    print(metrics_table(rows, CSV_COLUMNS))
    print(f"wall time: {time.perf_counter() - started:.1f}s")
    if args.csv is not None:
        write_csv(args.csv, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
