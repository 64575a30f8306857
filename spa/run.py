"""``python -m spa.run``: one train -> prune -> recover experiment, with the original experiment script's flags.

With no flags it fine-prunes a ResNet-18 (pretrained on printed digits) on the embedded digits 5-9 task.
Prints one table row per pruning step and, with ``--csv``, writes the same rows as CSV.

The flags are generated from the config dataclasses (``spa.flags``); ``ORIGINAL_FLAGS`` keeps the original
script's spellings working as aliases, with their meaning and default.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import math
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from spa.config import ExperimentConfig
from spa.data import dataset_names
from spa.files import write_atomically
from spa.flags import add_flags, values_from_flags
from spa.metrics import METRIC_NAMES as CSV_COLUMNS
from spa.models import ARCHITECTURES

__all__ = ["ORIGINAL_FLAGS", "COMMAND_DEFAULTS", "build_parser", "config_from_args", "metrics_table", "main"]

# The original experiment script's names for fields that have other names here.
ORIGINAL_FLAGS = {
    "rank": ("--splora-rank",),
    "init_range": ("--splora-init-range",),
    "criterion": ("--method-type",),
    "shape": ("--schedule-shape",),
}
# Where this command's default differs from the config's: the original script fine-prunes unless --splora.
COMMAND_DEFAULTS = {"learner": "finetune"}


def _sections() -> dict[str, type]:
    """Section name -> its config dataclass, in ``ExperimentConfig``'s order."""
    return {field.name: field.default_factory for field in dataclasses.fields(ExperimentConfig)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m spa.run",
        description="Train a pretrained ResNet on a target task, then prune it step by step with recovery "
        "training, measuring accuracy, learned parameters and FLOPs after every step.",
    )
    what = parser.add_argument_group("what to run (the original script's switches)")
    what.add_argument(
        "--train", action="store_true", help="train on the target task first (default: on, unless only --prune)"
    )
    what.add_argument("--prune", action="store_true", help="prune step by step (default: on, unless only --train)")
    what.add_argument(
        "--splora",
        dest="learner",
        action="store_const",
        const="splora",
        default=argparse.SUPPRESS,  # the default is --learner's
        help="learn SPLoRA adapters instead of fine-pruning, as --learner splora (default: off)",
    )
    choices = {"arch": list(ARCHITECTURES)}
    details = {"dataset": f"{', '.join(dataset_names())} or imagefolder:PATH"}
    for name, section in _sections().items():
        add_flags(
            parser.add_argument_group(f"{name} settings"),
            section,
            aliases=ORIGINAL_FLAGS,
            defaults=COMMAND_DEFAULTS,
            choices=choices,
            details=details,
        )
    output = parser.add_argument_group("output")
    output.add_argument(
        "--csv", type=Path, default=None, help="also write the table as CSV to this path (default: none)"
    )
    output.add_argument("--quiet", action="store_true", help="no progress lines on stderr (default: off)")
    return parser


def config_from_args(args: argparse.Namespace) -> ExperimentConfig:
    flat: dict[str, Any] = {}
    for section in _sections().values():
        flat.update(values_from_flags(args, section))
    if args.train or args.prune:  # only the phases asked for; neither flag means both
        if not args.train:
            flat["epochs"] = 0
        if not args.prune:
            flat["steps"], flat["densities"] = 0, None
    return ExperimentConfig.from_flat(flat)


def metrics_table(rows: list[dict[str, Any]], columns: Iterable[str] = CSV_COLUMNS) -> str:
    """A fixed-width text table, one row per step."""
    columns = list(columns)
    cells = [[_format(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) if cells else len(c) for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)


def _format(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:.4f}" if abs(value) < 10 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return "" if value is None else str(value)


def write_csv(path: Path, rows: Sequence[dict[str, float]]) -> None:
    """Write atomically: a crash never leaves a half-written CSV behind."""

    def write(temporary: Path) -> None:
        with temporary.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)

    write_atomically(path, write)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # Heavy imports after argument parsing: --help and bad flags answer at once.
    from spa.experiment import NonFiniteLossError, run_experiment

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
