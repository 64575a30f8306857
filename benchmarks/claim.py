"""The paper's claim, checked on the embedded digits transfer task: fine-pruning vs SPLoRA rank 8 and rank 32.

Claim (Table 1 of "Structured Pruning Adapters", REFERENCE.md): at 10% density SPLoRA beats fine-pruning (FP) by
several accuracy points while learning about half the parameters; at 30% density SPLoRA rank 8 is within about
2 points of FP while learning >= 10x fewer parameters.

Protocol: for each criterion (weight, grad, taylor, lrp) x learner (FP, SPLoRA r8, SPLoRA r32) x seed (0, 1, 2) one
``spa.experiment.run_experiment``: the ResNet-18 pretrained on printed digits (cached under ``--cache-dir``)
transferred to digits 5-9, trained ``--epochs``, then pruned along the schedule 0.6 -> 0.3 -> 0.1 with
``--recovery-epochs`` of recovery after each step; the rows at 0.3 and 0.1 are read. Step 0 (trained, unpruned)
gives the "none" rows. Batch 32, per-layer normalised scores over one full pass of the training data. Every
training setting is the harness default (``spa.config``: SGD, cosine schedule, 6 epochs, lr 0.01 for both learners,
SPLoRA's adapter factors at 100x that, init range 1e-3), chosen for a converged transfer at step 0 (issue 10); the
flags override them. Runs go one thread each, ``--workers`` processes side by side.

Writes a table shaped like ``paper_table1.csv`` (criterion, learner, density; learned parameters in k and FLOPs in
M, mean and sample std; test accuracy in percent on digits, mean and sample std; n runs) to
``benchmarks/results/claim.csv`` (``claim_quick.csv`` with ``--quick``), every run's rows to ``*_runs.csv``,
prints both the table and a verdict computed from it.

``--quick``: one seed, 1 epoch + 1 recovery epoch per step, channel scores on 4 batches, criteria weight and lrp
(a CI-size smoke check of the whole pipeline, not evidence).

Last line: ``splora_minus_fp_at_0.1=.. r8_minus_fp_at_0.3=.. learned_ratio_fp_over_r8_at_0.3=..
learned_ratio_r32_over_fp_at_0.1=..`` (accuracy differences in points, means over the criteria run;
``splora`` is rank 32, the rank whose learned parameters at 10% are closest to the paper's "about half").
"""

from __future__ import annotations

import argparse
import concurrent.futures
import csv
import math
import multiprocessing
import statistics
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spa.config import LearnerConfig, OptimConfig

OPTIM, LEARNER = OptimConfig(), LearnerConfig()  # the harness defaults this benchmark runs with
RESULTS = Path(__file__).resolve().parent / "results"
CRITERIA = ("weight", "grad", "taylor", "lrp")
TABLE_DENSITIES = (0.3, 0.1)
TABLE_COLUMNS = (
    "criterion",
    "learner",
    "density",
    "learned_params_k",
    "learned_params_k_std",
    "flops_m",
    "flops_m_std",
    "digits",
    "digits_std",
    "n",
)
RUN_COLUMNS = (
    "learner",
    "criterion",
    "seed",
    "step",
    "target_density",
    "density",
    "val_accuracy",
    "test_accuracy",
    "learned_params",
    "params",
    "flops",
    "wall_s",
)


@dataclass(frozen=True)
class Task:
    learner: str  # "finetune" or "splora_r{rank}", the paper's labels
    criterion: str
    seed: int

    @property
    def rank(self) -> int | None:
        return int(self.learner.removeprefix("splora_r")) if self.learner.startswith("splora_r") else None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke budget (see above) (default: off)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds 0..N-1 (default: 3; 1 with --quick)")
    parser.add_argument(
        "--criteria",
        nargs="+",
        choices=CRITERIA,
        default=None,
        help="criteria to run (default: all four; weight lrp with --quick)",
    )
    parser.add_argument("--ranks", type=int, nargs="+", default=[8, 32], help="SPLoRA ranks (default: 8 32)")
    parser.add_argument(
        "--epochs", type=int, default=None, help=f"transfer epochs (default: {OPTIM.epochs}; 1 with --quick)"
    )
    parser.add_argument(
        "--recovery-epochs", type=int, default=None, help="epochs after each pruning step (default: 3; 1 with --quick)"
    )
    parser.add_argument(
        "--densities",
        type=float,
        nargs="+",
        default=[0.6, 0.3, 0.1],
        help="pruning schedule; must contain 0.3 and 0.1 (default: 0.6 0.3 0.1)",
    )
    parser.add_argument(
        "--lr-finetune", type=float, default=OPTIM.lr, help=f"SGD learning rate of FP (default: {OPTIM.lr})"
    )
    parser.add_argument(
        "--lr-splora",
        type=float,
        default=OPTIM.lr,
        help=f"SGD learning rate of SPLoRA, its adapter factors at {OPTIM.adapter_lr_ratio:g}x (default: {OPTIM.lr})",
    )
    parser.add_argument(
        "--init-range",
        type=float,
        default=LEARNER.init_range,
        help=f"SPLoRA B init range (default: {LEARNER.init_range})",
    )
    parser.add_argument(
        "--max-score-batches",
        type=int,
        default=None,
        help="batches per channel scoring (default: a full pass of the training data; 4 with --quick)",
    )
    parser.add_argument("--workers", type=int, default=2, help="runs side by side, one thread each (default: 2)")
    parser.add_argument(
        "--cache-dir",
        default=None,
        help="where the pretrained digits backbone is cached (default: spa's, $SPA_CACHE_DIR or ~/.cache/spa)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="table CSV (default: benchmarks/results/claim.csv, claim_quick.csv with --quick)",
    )
    parser.add_argument(
        "--from-runs",
        type=Path,
        default=None,
        help="re-aggregate a *_runs.csv written earlier instead of running anything (default: run)",
    )
    return parser


# --- aggregation (pure: plain rows in, plain rows out) ----------------------------------------------------------


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; NaN for a single value)."""
    if not values:
        raise ValueError("mean_std needs at least one value")
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values) if len(values) > 1 else math.nan


def claim_table(runs: Iterable[dict[str, Any]], densities: Sequence[float] = TABLE_DENSITIES) -> list[dict[str, Any]]:
    """Table-1 rows from per-(run, step) rows holding learner, criterion, seed, step, target_density,
    test_accuracy (0..1), learned_params and flops.

    "none" rows: step 0 (trained, unpruned) per learner, one value per (learner, seed), since the criterion does not
    act before the first pruning step; SPLoRA is labelled ``lora_r{rank}`` there, as in the paper. Then per criterion,
    learner and density in ``densities`` (matched to ``target_density``): the mean and sample std over seeds.
    Ordered as ``paper_table1.csv``: criterion, FP before SPLoRA by descending rank, density dense to sparse.
    """
    runs = list(runs)
    groups: dict[tuple[str, str, float], list[dict[str, Any]]] = {}
    seen_unpruned: set[tuple[str, int]] = set()
    for row in runs:
        learner, step = str(row["learner"]), int(row["step"])
        if step == 0:
            if (learner, int(row["seed"])) in seen_unpruned:
                continue
            seen_unpruned.add((learner, int(row["seed"])))
            key = ("none", learner.replace("splora_", "lora_"), 1.0)
        else:
            target = float(row["target_density"])
            matched = [d for d in densities if math.isclose(d, target, abs_tol=1e-9)]
            if not matched:
                continue
            key = (str(row["criterion"]), learner, matched[0])
        groups.setdefault(key, []).append(row)
    table = []
    for (criterion, learner, density), rows in groups.items():
        learned, learned_std = mean_std([float(r["learned_params"]) / 1e3 for r in rows])
        flop, flop_std = mean_std([float(r["flops"]) / 1e6 for r in rows])
        accuracy, accuracy_std = mean_std([float(r["test_accuracy"]) * 100 for r in rows])
        table.append(
            {
                "criterion": criterion,
                "learner": learner,
                "density": density,
                "learned_params_k": learned,
                "learned_params_k_std": learned_std,
                "flops_m": flop,
                "flops_m_std": flop_std,
                "digits": accuracy,
                "digits_std": accuracy_std,
                "n": len(rows),
            }
        )
    return sorted(table, key=_table_order)


def _table_order(row: dict[str, Any]) -> tuple[int, int, float]:
    criterion_rank = (("none", *CRITERIA).index(row["criterion"])) if row["criterion"] in ("none", *CRITERIA) else 99
    learner = row["learner"]
    rank = int(learner.rpartition("_r")[2]) if "_r" in learner else 0
    learner_rank = 0 if learner == "finetune" else 1_000_000 - rank  # FP first, then SPLoRA by descending rank
    return criterion_rank, learner_rank, -row["density"]


def _cell(table: list[dict[str, Any]], criterion: str, learner: str, density: float) -> dict[str, Any] | None:
    for row in table:
        if row["criterion"] == criterion and row["learner"] == learner and math.isclose(row["density"], density):
            return row
    return None


def claim_numbers(table: list[dict[str, Any]], *, high_rank: int = 32, low_rank: int = 8) -> dict[str, Any]:
    """Per criterion present at both densities for FP and both ranks, the differences the claim is about, and their
    means over those criteria (accuracy differences in percentage points)."""
    per_criterion: dict[str, dict[str, float]] = {}
    high, low = f"splora_r{high_rank}", f"splora_r{low_rank}"
    for criterion in CRITERIA:
        cells = {
            (learner, density): _cell(table, criterion, learner, density)
            for learner in ("finetune", high, low)
            for density in TABLE_DENSITIES
        }
        if any(cell is None for cell in cells.values()):
            continue
        fp10, hi10, lo10 = cells["finetune", 0.1], cells[high, 0.1], cells[low, 0.1]
        fp30, lo30 = cells["finetune", 0.3], cells[low, 0.3]
        per_criterion[criterion] = {
            "high_minus_fp_at_0.1": hi10["digits"] - fp10["digits"],
            "low_minus_fp_at_0.1": lo10["digits"] - fp10["digits"],
            "learned_ratio_high_over_fp_at_0.1": hi10["learned_params_k"] / fp10["learned_params_k"],
            "low_minus_fp_at_0.3": lo30["digits"] - fp30["digits"],
            "learned_ratio_fp_over_low_at_0.3": fp30["learned_params_k"] / lo30["learned_params_k"],
        }
    if not per_criterion:
        raise ValueError("no criterion has FP, both SPLoRA ranks and both densities 0.3 and 0.1 in the table")
    keys = next(iter(per_criterion.values())).keys()
    means = {key: statistics.fmean(values[key] for values in per_criterion.values()) for key in keys}
    return {"per_criterion": per_criterion, "means": means}


def headline(numbers: dict[str, Any]) -> dict[str, float]:
    """The last line's values."""
    means = numbers["means"]
    return {
        "splora_minus_fp_at_0.1": means["high_minus_fp_at_0.1"],
        "r8_minus_fp_at_0.3": means["low_minus_fp_at_0.3"],
        "learned_ratio_fp_over_r8_at_0.3": means["learned_ratio_fp_over_low_at_0.3"],
        "learned_ratio_r32_over_fp_at_0.1": means["learned_ratio_high_over_fp_at_0.1"],
    }


def verdict(numbers: dict[str, Any], *, high_rank: int = 32, low_rank: int = 8) -> str:
    """A paragraph answering the two questions from the numbers (no judgement that the numbers do not carry)."""
    per, means = numbers["per_criterion"], numbers["means"]
    criteria = ", ".join(per)
    wins = sum(values["high_minus_fp_at_0.1"] > 0 for values in per.values())
    holds_10 = means["high_minus_fp_at_0.1"] > 0 and means["learned_ratio_high_over_fp_at_0.1"] <= 0.75
    within = sum(values["low_minus_fp_at_0.3"] >= -2 for values in per.values())
    holds_30 = means["low_minus_fp_at_0.3"] >= -2 and means["learned_ratio_fp_over_low_at_0.3"] >= 10
    lines = [
        f"At 10% density SPLoRA r{high_rank} {'beats' if means['high_minus_fp_at_0.1'] > 0 else 'does not beat'} "
        f"fine-pruning: {means['high_minus_fp_at_0.1']:+.2f} points on average over {criteria} (ahead for {wins} of "
        f"{len(per)} criteria; r{low_rank}: {means['low_minus_fp_at_0.1']:+.2f}), learning "
        f"{means['learned_ratio_high_over_fp_at_0.1']:.2f}x FP's parameters (the paper: about 0.5x). "
        f"First claim {'holds' if holds_10 else 'does not hold'} here.",
        f"At 30% density SPLoRA r{low_rank} is {means['low_minus_fp_at_0.3']:+.2f} points from fine-pruning on average "
        f"(within 2 points for {within} of {len(per)} criteria) while learning "
        f"{means['learned_ratio_fp_over_low_at_0.3']:.1f}x fewer parameters (the paper: about -1.6 points, 16-22x). "
        f"Second claim {'holds' if holds_30 else 'does not hold'} here.",
    ]
    return "\n".join(lines)


def last_line(values: dict[str, float], digits: int = 2) -> str:
    """``name=value`` pairs separated by single spaces, values rounded to ``digits`` decimals."""
    return " ".join(f"{name}={value:.{digits}f}" for name, value in values.items())


def parse_last_line(line: str) -> dict[str, float]:
    """The inverse of ``last_line``: ``"a=1.00 b=-2.50"`` -> ``{"a": 1.0, "b": -2.5}``."""
    pairs = [item.split("=", 1) for item in line.split()]
    if any(len(pair) != 2 for pair in pairs):
        raise ValueError(f"not a line of name=value pairs: {line!r}")
    return {name: float(value) for name, value in pairs}


# --- writing and printing ----------------------------------------------------------------------------------------


def _format(value: Any, column: str) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        return f"{value:.2f}" if column in ("density", "digits", "digits_std") else f"{value:.1f}"
    return str(value)


def write_table(table: list[dict[str, Any]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(TABLE_COLUMNS)
        for row in table:
            writer.writerow([_format(row[column], column) for column in TABLE_COLUMNS])


def table_text(table: list[dict[str, Any]]) -> str:
    def pm(mean: float, std: float, digits: int) -> str:
        return f"{mean:.{digits}f}" if math.isnan(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"

    header = f"{'criterion':>9} {'learner':>11} {'density':>7} {'learned params (k)':>19} {'FLOPs (M)':>13} "
    header += f"{'test acc. (%)':>15} {'n':>2}"
    lines = [header]
    for row in table:
        lines.append(
            f"{row['criterion']:>9} {row['learner']:>11} {row['density']:>7.2f} "
            f"{pm(row['learned_params_k'], row['learned_params_k_std'], 1):>19} "
            f"{pm(row['flops_m'], row['flops_m_std'], 1):>13} {pm(row['digits'], row['digits_std'], 2):>15} "
            f"{row['n']:>2}"
        )
    return "\n".join(lines)


def write_runs(rows: list[dict[str, Any]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=RUN_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def read_runs(path: Path) -> list[dict[str, Any]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


# --- running -----------------------------------------------------------------------------------------------------


def run_task(task: Task, settings: dict[str, Any]) -> list[dict[str, Any]]:
    """One experiment (in a worker process): its per-step rows, labelled with the task and its wall time."""
    from spa.config import ExperimentConfig
    from spa.experiment import run_experiment

    flat = {
        **settings["common"],
        "learner": "finetune" if task.rank is None else "splora",
        "lr": settings["lr_finetune"] if task.rank is None else settings["lr_splora"],
        "criterion": task.criterion,
        "seed": task.seed,
    }
    if task.rank is not None:
        flat["rank"] = task.rank
    started = time.perf_counter()
    history = run_experiment(ExperimentConfig.from_flat(flat))
    wall = time.perf_counter() - started
    return [
        {**row, "learner": task.learner, "criterion": task.criterion, "seed": task.seed, "wall_s": round(wall, 1)}
        for row in history
    ]


def _settings(args: argparse.Namespace, quick: bool) -> dict[str, Any]:
    epochs = args.epochs if args.epochs is not None else (1 if quick else OPTIM.epochs)
    recovery = args.recovery_epochs if args.recovery_epochs is not None else (1 if quick else 3)
    max_score_batches = args.max_score_batches if args.max_score_batches is not None else (4 if quick else None)
    return {
        "common": {
            "dataset": "digits",
            "arch": "resnet18",
            "weights": "pretrained-digits",
            "init_range": args.init_range,
            "densities": tuple(args.densities),
            "epochs": epochs,
            "recovery_epochs": recovery,
            "batch_size": 32,
            "max_score_batches": max_score_batches,
            "threads": 1,
            "device": "cpu",
            "cache_dir": args.cache_dir,
        },
        "lr_finetune": args.lr_finetune,
        "lr_splora": args.lr_splora,
    }


def run_all(tasks: list[Task], settings: dict[str, Any], workers: int) -> list[dict[str, Any]]:
    # Spawned workers: forking a process that has already run torch's thread pools can deadlock.
    context = multiprocessing.get_context("spawn")
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = {pool.submit(run_task, task, settings): task for task in tasks}
        for done, future in enumerate(concurrent.futures.as_completed(futures), start=1):
            task = futures[future]
            result = future.result()
            rows += result
            last = result[-1]
            print(
                f"[{done}/{len(tasks)} at {time.perf_counter() - started:.0f} s] {task.learner} {task.criterion} "
                f"seed {task.seed}: {last['wall_s']:.0f} s, final density {last['density']:.3f} test "
                f"{last['test_accuracy']:.3f}",
                flush=True,
            )
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quick = args.quick
    out = args.out or RESULTS / ("claim_quick.csv" if quick else "claim.csv")
    runs_path = out.with_name(out.stem + "_runs.csv")
    started = time.perf_counter()
    if args.from_runs is not None:
        rows = read_runs(args.from_runs)
    else:
        missing = [d for d in TABLE_DENSITIES if not any(math.isclose(d, x) for x in args.densities)]
        if missing:
            raise SystemExit(f"--densities {args.densities} must contain {list(TABLE_DENSITIES)}; missing {missing}")
        criteria = args.criteria or (["weight", "lrp"] if quick else list(CRITERIA))
        seeds = args.seeds if args.seeds is not None else (1 if quick else 3)
        learners = ["finetune", *(f"splora_r{rank}" for rank in args.ranks)]
        # lrp first: the slowest runs start early, so the two workers finish together.
        ordered = sorted(criteria, key=lambda c: c != "lrp")
        tasks = [Task(learner, c, seed) for c in ordered for learner in learners for seed in range(seeds)]
        settings = _settings(args, quick)
        from spa.pretrain import PretrainConfig, pretrained_backbone

        # Train (or find) the backbone once here, so the workers do not queue on its lock.
        pretrained_backbone(PretrainConfig(arch="resnet18"), args.cache_dir, threads=args.workers)
        common = settings["common"]
        print(
            f"{len(tasks)} runs ({', '.join(learners)} x {', '.join(criteria)} x {seeds} seed(s)), "
            f"{common['epochs']} epochs + {common['recovery_epochs']} per step, schedule {list(args.densities)}, "
            f"{args.workers} workers",
            flush=True,
        )
        rows = run_all(tasks, settings, args.workers)
        write_runs(rows, runs_path)
    table = claim_table(rows)
    write_table(table, out)
    print(table_text(table))
    print(f"(table: {out}; runs: {args.from_runs or runs_path}; took {time.perf_counter() - started:.0f} s)")
    numbers = claim_numbers(table)
    if quick:
        print("(--quick: a smoke budget of 1 epoch and 1 seed; the verdict below checks the pipeline, not the claim)")
    print(verdict(numbers))
    print(last_line(headline(numbers)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
