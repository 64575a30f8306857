"""Is the default transfer converged at step 0? Val and test accuracy at the default epochs and at twice as many.

Goal (issue 10): on the default embedded task (the ``pretrained-digits`` ResNet-18 transferred to digits 5-9,
every harness default from ``spa.config``), step 0 reaches val accuracy >= 0.95 for fine-tuning and for SPLoRA
rank 8 on every seed, and doubling the step-0 epochs gains <= 1 point: otherwise a study's front measures how long
a trial trained, not what pruning costs. ``tests/spa/test_transfer.py`` checks the first goal on one seed per
learner (what CI can afford); this script checks both on ``--seeds`` seeds.

Protocol: for each learner x seed x epochs in (``--epochs``, ``--factor`` x ``--epochs``), one
``spa.experiment.run_experiment`` with ``steps=0`` (train, report step 0, prune nothing), one thread each,
``--workers`` processes side by side. The same seed at both budgets shares its val and test images and its
initialisation, so a gain is a paired difference.

Noise, printed per learner, so a gain can be read against it: the seed-to-seed sample std of val accuracy at the
default epochs; the binomial std of one accuracy measured on ``n`` images at the observed mean (``sqrt(p (1 - p) /
n)``: what the finite val set alone adds); and the standard error of the mean paired gain (sample std of the
per-seed gains / sqrt(seeds)).

Last line: ``step0_val_min_finetune=.. step0_val_min_splora=.. doubling_gain_finetune=.. doubling_gain_splora=..``
(the lowest step-0 val accuracy over seeds at the default epochs, 0..1; the mean over seeds of val accuracy at the
doubled epochs minus at the default epochs, in points).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import math
import multiprocessing
import statistics
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any

from spa.config import DataConfig, OptimConfig

OPTIM, DATA = OptimConfig(), DataConfig()  # the harness defaults this benchmark measures
LEARNERS = ("finetune", "splora")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default: 3)")
    parser.add_argument(
        "--learners", nargs="+", choices=LEARNERS, default=list(LEARNERS), help="learners (default: both)"
    )
    parser.add_argument("--epochs", type=int, default=OPTIM.epochs, help=f"step-0 epochs (default: {OPTIM.epochs})")
    parser.add_argument("--factor", type=int, default=2, help="the longer budget is factor x epochs (default: 2)")
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=DATA.val_fraction,
        help="share of the training data held out as val (default: the dataset's own, 0.25 for digits)",
    )
    parser.add_argument("--workers", type=int, default=2, help="runs side by side, one thread each (default: 2)")
    parser.add_argument(
        "--cache-dir",
        default=None,
        help="where the pretrained digits backbone is cached (default: spa's, $SPA_CACHE_DIR or ~/.cache/spa)",
    )
    return parser


# --- summaries (pure: plain rows in, plain numbers out) ---------------------------------------------------------


def binomial_std(p: float, n: int) -> float:
    """Std of an accuracy measured on ``n`` independent images when the true accuracy is ``p``, in points."""
    if n < 1:
        raise ValueError(f"binomial_std needs n >= 1 images, got {n}")
    return 100 * math.sqrt(p * (1 - p) / n)


def _stdev(values: Sequence[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else math.nan


def summarise(
    rows: Iterable[dict[str, Any]], *, epochs: int, longer: int, n_val: int, n_test: int
) -> dict[str, dict[str, float]]:
    """Per learner, from rows holding learner, seed, epochs, val_accuracy and test_accuracy (0..1).

    Accuracies at ``epochs`` (the default budget): val min, mean and sample std over seeds, test mean, the binomial
    std of one val and one test measurement at their means. Gains (points, ``longer`` minus ``epochs``, over the
    seeds run at both): mean and standard error of the mean, on val and on test.
    """
    by_learner: dict[str, dict[int, dict[int, dict[str, Any]]]] = {}
    for row in rows:
        by_learner.setdefault(str(row["learner"]), {}).setdefault(int(row["epochs"]), {})[int(row["seed"])] = row
    summary: dict[str, dict[str, float]] = {}
    for learner, budgets in by_learner.items():
        base = budgets.get(epochs, {})
        if not base:
            raise ValueError(f"no {learner} run at the default {epochs} epochs")
        val = [float(r["val_accuracy"]) for r in base.values()]
        test = [float(r["test_accuracy"]) for r in base.values()]
        figures = {
            "val_min": min(val),
            "val_mean": statistics.fmean(val),
            "val_std": 100 * _stdev(val),
            "test_mean": statistics.fmean(test),
            "test_std": 100 * _stdev(test),
            "val_binomial_std": binomial_std(statistics.fmean(val), n_val),
            "test_binomial_std": binomial_std(statistics.fmean(test), n_test),
        }
        long = budgets.get(longer, {})
        paired = sorted(set(base) & set(long))
        for split in ("val", "test"):
            gains = [100 * (float(long[s][f"{split}_accuracy"]) - float(base[s][f"{split}_accuracy"])) for s in paired]
            figures[f"{split}_gain"] = statistics.fmean(gains) if gains else math.nan
            figures[f"{split}_gain_se"] = _stdev(gains) / math.sqrt(len(gains)) if gains else math.nan
        summary[learner] = figures
    return summary


def headline(summary: dict[str, dict[str, float]]) -> dict[str, float]:
    """The last line's values: every learner's lowest step-0 val, then every learner's val gain."""
    values = {f"step0_val_min_{learner}": figures["val_min"] for learner, figures in summary.items()}
    values.update({f"doubling_gain_{learner}": figures["val_gain"] for learner, figures in summary.items()})
    return values


def last_line(values: dict[str, float], digits: int = 3) -> str:
    """``name=value`` pairs separated by single spaces, values rounded to ``digits`` decimals."""
    return " ".join(f"{name}={value:.{digits}f}" for name, value in values.items())


def summary_text(summary: dict[str, dict[str, float]], *, epochs: int, longer: int) -> str:
    lines = []
    for learner, f in summary.items():
        lines.append(
            f"{learner:>8}: val at {epochs} epochs min {f['val_min']:.3f} mean {f['val_mean']:.3f} (seed std "
            f"{f['val_std']:.2f}, binomial std {f['val_binomial_std']:.2f} points); test mean {f['test_mean']:.3f} "
            f"(seed std {f['test_std']:.2f}, binomial {f['test_binomial_std']:.2f}); gain at {longer} epochs: val "
            f"{f['val_gain']:+.2f} ± {f['val_gain_se']:.2f}, test {f['test_gain']:+.2f} ± {f['test_gain_se']:.2f} "
            "points (mean ± s.e.)"
        )
    return "\n".join(lines)


# --- running -----------------------------------------------------------------------------------------------------


def run_task(learner: str, seed: int, epochs: int, common: dict[str, Any]) -> dict[str, Any]:
    """One step-0 training (in a worker process): its accuracies and wall time."""
    from spa.config import ExperimentConfig
    from spa.experiment import run_experiment

    flat = {**common, "learner": learner, "seed": seed, "epochs": epochs, "steps": 0}
    started = time.perf_counter()
    (step0,) = run_experiment(ExperimentConfig.from_flat(flat))
    return {
        "learner": learner,
        "seed": seed,
        "epochs": epochs,
        "val_accuracy": step0["val_accuracy"],
        "test_accuracy": step0["test_accuracy"],
        "wall_s": time.perf_counter() - started,
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.seeds < 1 or args.epochs < 1 or args.factor < 2 or args.workers < 1:
        print(
            f"--seeds {args.seeds}, --epochs {args.epochs}, --workers {args.workers} must be >= 1 and --factor "
            f"{args.factor} >= 2",
            file=sys.stderr,
        )
        return 2
    from spa.data import load_splits
    from spa.pretrain import PretrainConfig, pretrained_backbone

    started = time.perf_counter()
    splits = load_splits("digits", val_fraction=args.val_fraction, seed=0)
    n_val, n_test = len(splits.val), len(splits.test)  # the same counts for every seed
    longer = args.factor * args.epochs
    # Train (or find) the backbone once here, so the workers do not queue on its lock.
    pretrained_backbone(PretrainConfig(arch="resnet18"), args.cache_dir, threads=args.workers)
    common = {"val_fraction": args.val_fraction, "threads": 1, "device": "cpu", "cache_dir": args.cache_dir}
    # The longer runs first: the slowest start early, so the workers finish together.
    tasks = [
        (learner, seed, e) for e in (longer, args.epochs) for learner in args.learners for seed in range(args.seeds)
    ]
    print(
        f"{len(tasks)} step-0 trainings ({', '.join(args.learners)} x {args.seeds} seed(s) x {args.epochs} and "
        f"{longer} epochs), val {n_val} images, test {n_test}, {args.workers} workers",
        flush=True,
    )
    rows = []
    context = multiprocessing.get_context("spawn")  # forking after torch's thread pools ran can deadlock
    with concurrent.futures.ProcessPoolExecutor(max_workers=args.workers, mp_context=context) as pool:
        futures = [pool.submit(run_task, *task, common) for task in tasks]
        for future in concurrent.futures.as_completed(futures):
            row = future.result()
            rows.append(row)
            print(
                f"{row['learner']} seed {row['seed']} {row['epochs']} epochs: val {row['val_accuracy']:.3f} test "
                f"{row['test_accuracy']:.3f} ({row['wall_s']:.0f} s)",
                flush=True,
            )
    summary = summarise(rows, epochs=args.epochs, longer=longer, n_val=n_val, n_test=n_test)
    print(summary_text(summary, epochs=args.epochs, longer=longer))
    print(f"(took {time.perf_counter() - started:.0f} s)")
    print(last_line(headline(summary)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
