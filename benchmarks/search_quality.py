"""Is the search any good? The hypervolume a study reaches at equal compute: random vs the sized TPE vs GP (all
with fifo), and fifo vs moasha (both with the sized TPE), over ``--seeds`` seeds each, on the embedded digits task.

Each study is ``python -m study.tune`` run in-process (one local Ray for all of them) on ``--space``, its results read
back from MLflow (``study.records.load_points``). Compute is training epochs: a trial's last reported ``epoch``
(recovery epochs included). The samplers' studies have ``--num-samples`` trials each under fifo, so equal trials are
equal compute, up to the schedules' own lengths: each is cut at the smallest total of the three. moasha stops trials
early, so its study gets ``--moasha-extra`` times the trials and is cut, in trial order, where its compute reaches
the fifo study's; a moasha study that ends short of that budget did less, and the line of its arm says so.

Hypervolume: of the completed trials' final (val_accuracy, learned_params) that keep the space's constraints,
accuracy maximised from 0 and log10(learned params) minimised from a reference shared by every study (the largest
value any study saw, plus 0.1). Ratios are of per-seed means; the spread is the per-seed ratios' standard deviation.

Last line: ``tpe_over_random=.. gp_over_random=.. moasha_over_fifo=..`` (goal, issue 12: each >= 1.0 in the mean);
with ``--moasha-only`` (the TPE studies under fifo and moasha, nothing else) ``moasha_over_fifo=..`` alone.
``--quick``: the smoke budget, 6 trials per study, 2 seeds; a check that it runs, not a measurement.
``--medium``: 8 trials per study, 3 seeds, on ``medium_space``: the space at one epoch before pruning and one of
recovery, but 2 to 4 pruning steps, so moasha has rungs at steps 0, 1 and 2 and really stops trials, and the sized
TPE (2 startup trials; under moasha too, sized to the compute, ``study.sampler_plan``) and GP (2) model most of
the 8 trials; a floor of 0.3 (chance is 0.2), as one epoch cannot
reach the real budget's. 63 min on the 2 shared cores at load 3-20 (issue 12); the full budget is
about 2 h.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import last_line  # noqa: E402

SAMPLER_ARMS = ("random", "tpe", "gp")
METRICS = ("val_accuracy", "learned_params")
# --medium's budget: what it fixes in the space, the searched pruning steps and the floor (see the docstring).
MEDIUM_FIXED = {"epochs": 1, "recovery_epochs": 1, "max_score_batches": 2}
MEDIUM_STEPS = (2, 4)
MEDIUM_MIN_VAL_ACCURACY = 0.3
MEDIUM_NUM_SAMPLES, MEDIUM_SEEDS = 8, 3


# --- pure helpers -------------------------------------------------------------------------------------------------


def hypervolume_2d(losses: np.ndarray, reference: Sequence[float]) -> float:
    """The area dominated by (n, 2) minimised ``losses`` and bounded by ``reference``; rows not better than the
    reference in both objectives, or holding NaN, add nothing."""
    losses = np.asarray(losses, dtype=float).reshape(-1, 2)
    keep = ~np.isnan(losses).any(axis=1) & (losses[:, 0] < reference[0]) & (losses[:, 1] < reference[1])
    points = losses[keep]
    if not len(points):
        return 0.0
    points = points[np.lexsort((points[:, 1], points[:, 0]))]  # by loss 0, then loss 1
    area, best_second = 0.0, reference[1]
    for index, (first, second) in enumerate(points):
        if second >= best_second:
            continue
        next_first = reference[0]
        # The slab from this point's loss 0 to the next point that lowers loss 1 further.
        for later_first, later_second in points[index + 1 :]:
            if later_second < second:
                next_first = later_first
                break
        area += (next_first - first) * (reference[1] - second)
        best_second = second
    return float(area)


def study_losses(finals: pd.DataFrame) -> np.ndarray:
    """(n, 2) minimised losses of final points: -val_accuracy and log10(learned_params)."""
    accuracy = finals["val_accuracy"].to_numpy(dtype=float)
    params = finals["learned_params"].to_numpy(dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.column_stack([-accuracy, np.log10(params)])


def cut_at_compute(trials: pd.DataFrame, budget: float) -> pd.DataFrame:
    """The first trials (in trial order) whose epochs add up to at most ``budget``."""
    ordered = trials.sort_values("trial_number", kind="mergesort")
    return ordered[ordered["epochs"].cumsum() <= budget + 1e-9]


def ratio_and_spread(numerator: Sequence[float], denominator: Sequence[float]) -> tuple[float, float]:
    """(mean of numerator / mean of denominator, standard deviation of the per-seed ratios; 0 for one seed)."""
    top, bottom = statistics.fmean(numerator), statistics.fmean(denominator)
    ratio = top / bottom if bottom > 0 else math.nan
    per_seed = [a / b for a, b in zip(numerator, denominator, strict=True) if b > 0]
    return ratio, statistics.stdev(per_seed) if len(per_seed) > 1 else 0.0


RATIOS = ("tpe_over_random", "gp_over_random", "moasha_over_fifo")


def replay_finals(curves: dict[str, list[dict]], order: Sequence[str], budget: float, scheduler) -> np.ndarray:
    """Run the trials of ``order`` one after another through ``scheduler`` (its ``decide(trial_id, result)``), each
    ending where it says STOP or at its last result, until the next trial's epochs would pass ``budget``; the (n, 2)
    minimised losses (``study_losses``) of those that reached their last result. A curve is a trial's results by step,
    each with ``step``, ``epoch``, ``final_step`` and the objectives, and ``feasible`` (keeps the constraints)."""
    spent, finals = 0.0, []
    for trial_id in order:
        curve, stopped = curves[trial_id], False
        for result in curve:
            if scheduler.decide(trial_id, result) == "STOP":
                stopped = True
                break
        if spent + result["epoch"] > budget + 1e-9:
            break
        spent += result["epoch"]
        if not stopped and result["feasible"]:
            finals.append(result)
    return study_losses(pd.DataFrame(finals, columns=list(METRICS)))


def replayed_ratio(curves: dict[str, list[dict]], make_scheduler, *, trials: int, reference: Sequence[float],
                   orders: int = 400, seed: int = 0) -> tuple[float, float]:  # fmt: skip
    """moasha's rule replayed over trials that ran under fifo (``curves``): in ``orders`` random orders, the
    hypervolume of the first ``trials`` under fifo, and of as many as fit in their epochs under a fresh
    ``make_scheduler()``; (mean over mean, standard error of the paired differences over fifo's mean). Exact for
    trials drawn at random (a sampler that learns would have drawn others after a stop), and free: no training."""
    rng = np.random.default_rng(seed)
    fifo, moasha = [], []
    for _ in range(orders):
        order = [str(trial_id) for trial_id in rng.permutation(list(curves))]
        budget = sum(curves[trial_id][-1]["epoch"] for trial_id in order[:trials])
        fifo.append(hypervolume_2d(replay_finals(curves, order, budget, _NeverStop()), reference))
        moasha.append(hypervolume_2d(replay_finals(curves, order, budget, make_scheduler()), reference))
    mean = statistics.fmean(fifo)
    differences = np.subtract(moasha, fifo)
    return statistics.fmean(moasha) / mean, float(np.std(differences, ddof=1) / math.sqrt(orders) / mean)


class _NeverStop:
    def decide(self, trial_id: str, result: dict) -> str:
        return "CONTINUE"


def ratios_line(ratios: dict[str, float]) -> str:
    """The last line: the ratios measured, in the issue's order."""
    return last_line({name: ratios[name] for name in RATIOS if name in ratios}, 3)


def medium_space(space: str, directory: Path) -> Path:
    """A space file in ``directory`` that extends ``space`` (a name or a file) with --medium's budget."""
    from study.space_files import toml_text

    data = {
        "description": f"{space} at search_quality --medium's budget",
        "fixed": MEDIUM_FIXED,
        "params": {"steps": {"type": "int", "low": MEDIUM_STEPS[0], "high": MEDIUM_STEPS[1]}},
        "constraints": {"min_val_accuracy": MEDIUM_MIN_VAL_ACCURACY},
    }
    base = str(Path(space).resolve()) if space.endswith(".toml") else space
    path = directory / "medium.toml"
    path.write_text(f"extends = {json.dumps(base)}\n" + toml_text(data))
    return path


# --- studies ------------------------------------------------------------------------------------------------------


def run_study(name: str, *, space: str, sampler: str, scheduler: str, seed: int, trials: int, root: Path,
              quick: bool, backbone_cache: str | None, keep: str | None = None) -> pd.DataFrame:  # fmt: skip
    """Run one study; one row per trial: trial_number, status, epochs, the objectives at its last step, whether it
    keeps the constraints (``feasible``) and its ``curve`` (``replay_finals``' results by step). ``keep``: a
    directory to write every step point to (``NAME.csv``, ``study.records.load_points``' table)."""
    from mlflow.tracking import MlflowClient

    from spa.counting import projected_learned_parameters
    from study.constraints import VIOLATION
    from study.names import PROJECTED_LEARNED_PARAMS
    from study.records import child_runs, load_points
    from study.tune import main

    tracking = f"sqlite:///{root / 'mlflow.db'}"
    argv = ["--space", space, "--name", name, "--sampler", sampler, "--scheduler", scheduler, "--seed", str(seed),
            "--num-samples", str(trials), "--storage-path", str(root / "runs"), "--tracking-uri", tracking]  # fmt: skip
    if quick:
        argv.append("--smoke")
    if backbone_cache:
        argv += ["--cache-dir", backbone_cache]
    status = main(argv)
    if status != 0:
        raise RuntimeError(f"study {name} ended with status {status}")
    client = MlflowClient(tracking_uri=tracking)
    experiment = client.get_experiment_by_name(name)
    points = load_points(client, experiment.experiment_id, statuses=None)
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        points.to_csv(Path(keep) / f"{name}.csv", index=False)
    violated = {run.info.run_id for run in child_runs(client, experiment.experiment_id) if VIOLATION in run.data.tags}
    rows = []
    for run_id, steps in points.groupby("run_id"):
        last = steps.loc[steps["step"].idxmax()]
        feasible = run_id not in violated
        curve = [
            {"step": int(row["step"]), "epoch": float(row["epoch"]), "final_step": int(last["step"]),
             "feasible": feasible, **{metric: float(row[metric]) for metric in METRICS},
             PROJECTED_LEARNED_PARAMS: projected_learned_parameters(
                 float(row["learned_params"]), learner=str(row["learner"]), density=float(row["target_density"]),
                 final_density=float(last["target_density"]))}  # as the trainable reports it (a finished trial's)
            for _, row in steps.sort_values("step").iterrows()
        ]  # fmt: skip
        rows.append(
            {
                "trial_number": int(str(last["run_name"]).split("-")[-1]),
                "status": last["status"],
                "epochs": float(steps["epoch"].max()),
                **{metric: float(last[metric]) for metric in METRICS},
                "feasible": feasible,
                "curve": curve,
            }
        )
    return pd.DataFrame(rows)


def replay_line(studies: dict, sampler_arms: Sequence[str], *, trials: int, reference: Sequence[float]) -> str:
    """moasha's rules replayed over every fifo study's trials that ran to their end (``replayed_ratio``): the study's
    (``study.schedulers``) and the other of ``study.moasha.RULES``."""
    from study.moasha import RULES, MOASHAScheduler
    from study.names import FINAL_STEP
    from study.schedulers import MOASHA_RULE, REDUCTION_FACTOR, RUNG_METRICS

    curves = {
        f"{arm}-{seed}-{row.trial_number}": row.curve
        for (arm, seed), frame in studies.items()
        if arm in sampler_arms
        for row in frame.itertuples()
        if row.status == "FINISHED"
    }
    if len(curves) <= trials:
        return f"moasha replayed: not enough fifo trials ({len(curves)}) for orders of more than {trials}"

    max_t = max(curve[-1]["final_step"] for curve in curves.values())

    def make(rule: str):  # the study's moasha (study.schedulers.make_scheduler) without its journal
        return lambda: MOASHAScheduler(
            metrics=list(METRICS), modes=["max", "min"], max_t=max_t, reduction_factor=REDUCTION_FACTOR,
            final_attr=FINAL_STEP, rung_metrics=[RUNG_METRICS.get(metric, metric) for metric in METRICS], rule=rule,
        )  # fmt: skip

    rules = [MOASHA_RULE, *(rule for rule in RULES if rule != MOASHA_RULE)]
    shown = []
    for rule in rules:
        ratio, error = replayed_ratio(curves, make(rule), trials=trials, reference=reference)
        label = f"{rule} (the study's)" if rule == MOASHA_RULE else rule
        shown.append(f"{label} {ratio:.3f} (s.e. {error:.3f})")
    return (
        f"moasha replayed over the {len(curves)} fifo trials in random orders, {trials} under fifo against as many as "
        f"fit in their epochs: {', '.join(shown)}"
    )


def finals_of(trials: pd.DataFrame) -> pd.DataFrame:
    return trials[(trials["status"] == "FINISHED") & trials["feasible"]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", default="splora_lrp", help="the search space (default: splora_lrp)")
    parser.add_argument("--num-samples", type=int, default=16, help="trials per fifo study (default: 16)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per arm (default: 3)")
    parser.add_argument(
        "--first-seed", type=int, default=0, help="the first seed; more seeds of an earlier run (default: 0)"
    )
    parser.add_argument(
        "--moasha-extra", type=float, default=2.0, help="moasha's trials as a multiple of fifo's (default: 2.0)"
    )
    parser.add_argument(
        "--moasha-only", action="store_true", help="only the TPE studies under fifo and moasha (default: off)"
    )
    parser.add_argument("--keep", default=None, help="a directory to keep every study's step points in (default: none)")
    parser.add_argument("--cache-dir", default=None, help="backbone cache (default: study.tune's)")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--quick", action="store_true", help="smoke budget, 6 trials, 2 seeds (default: off)")
    budget.add_argument(
        "--medium",
        action="store_true",
        help=f"{MEDIUM_NUM_SAMPLES} trials, {MEDIUM_SEEDS} seeds, the space at {MEDIUM_FIXED}, steps "
        f"{MEDIUM_STEPS[0]}-{MEDIUM_STEPS[1]}, floor {MEDIUM_MIN_VAL_ACCURACY} (default: off)",
    )
    args = parser.parse_args(argv)
    if args.moasha_extra < 1:
        print(f"error: --moasha-extra {args.moasha_extra}: allowed: a multiple >= 1 of fifo's trials", file=sys.stderr)
        return 2
    if args.first_seed < 0:
        print(f"error: --first-seed {args.first_seed}: allowed: 0 or more", file=sys.stderr)
        return 2
    if args.quick:
        args.num_samples, args.seeds = 6, 2
    if args.medium:
        args.num_samples, args.seeds = MEDIUM_NUM_SAMPLES, MEDIUM_SEEDS

    seeds = range(args.first_seed, args.first_seed + args.seeds)
    import logging

    import optuna
    import ray

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("ray.tune").setLevel(logging.WARNING)
    ray.init(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    studies: dict[tuple[str, int], pd.DataFrame] = {}
    started = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="spa-quality-") as temporary:
            root = Path(temporary)
            space = str(medium_space(args.space, root)) if args.medium else args.space
            sampler_arms = ("tpe",) if args.moasha_only else SAMPLER_ARMS
            for seed in seeds:
                arms = [(sampler, "fifo", args.num_samples) for sampler in sampler_arms]
                arms.append(("tpe", "moasha", math.ceil(args.num_samples * args.moasha_extra)))
                for sampler, scheduler, trials in arms:
                    arm = sampler if scheduler == "fifo" else scheduler
                    studies[(arm, seed)] = run_study(
                        f"quality-{arm}-{seed}", space=space, sampler=sampler, scheduler=scheduler, seed=seed,
                        trials=trials, root=root, quick=args.quick, backbone_cache=args.cache_dir, keep=args.keep,
                    )  # fmt: skip
                    print(f"seed {seed} {arm}: {len(studies[(arm, seed)])} trials "
                          f"({time.perf_counter() - started:.0f}s)", file=sys.stderr, flush=True)  # fmt: skip
    finally:
        ray.shutdown()

    # Equal compute: the samplers' studies cut at the smallest total among them; moasha at fifo's (tpe's) total.
    cut: dict[tuple[str, int], pd.DataFrame] = {}
    for seed in seeds:
        budget = min(studies[(arm, seed)]["epochs"].sum() for arm in sampler_arms)
        for arm in sampler_arms:
            cut[(arm, seed)] = cut_at_compute(studies[(arm, seed)], budget)
        cut[("fifo", seed)] = cut[("tpe", seed)]
        cut[("moasha", seed)] = cut_at_compute(studies[("moasha", seed)], cut[("tpe", seed)]["epochs"].sum())
    finals = {key: finals_of(trials) for key, trials in cut.items()}
    every = pd.concat([frame for frame in finals.values() if len(frame)] or [pd.DataFrame(columns=list(METRICS))])
    reference = (0.0, float(np.log10(every["learned_params"].max())) + 0.1 if len(every) else 1.0)
    volumes = {key: hypervolume_2d(study_losses(frame), reference) for key, frame in finals.items()}
    for arm in (*sampler_arms, "moasha"):
        shown = ", ".join(f"{volumes[(arm, seed)]:.3f}" for seed in seeds)
        epochs = ", ".join(f"{cut[(arm, seed)]['epochs'].sum():.0f}" for seed in seeds)
        completed = ", ".join(str(len(finals[(arm, seed)])) for seed in seeds)
        print(f"{arm:>7}: hypervolume by seed {shown} (epochs {epochs}; feasible finals {completed})")
    short = [seed for seed in seeds if studies[("moasha", seed)]["epochs"].sum() < cut[("fifo", seed)]["epochs"].sum()]
    if short:
        print(f"moasha ran out of trials short of fifo's compute in seeds {short}: raise --moasha-extra")

    print(replay_line(studies, sampler_arms, trials=args.num_samples, reference=reference))

    ratios, spreads = {}, {}
    pairs = [("tpe_over_random", "tpe", "random"), ("gp_over_random", "gp", "random")] if not args.moasha_only else []
    for name, top, bottom in (*pairs, ("moasha_over_fifo", "moasha", "fifo")):
        by_seed = [[volumes[(arm, seed)] for seed in seeds] for arm in (top, bottom)]
        ratios[name], spreads[name] = ratio_and_spread(*by_seed)
        beyond = "beyond" if abs(ratios[name] - 1) > spreads[name] else "within"
        print(f"{name}: {ratios[name]:.3f} (per-seed ratios' spread {spreads[name]:.3f}: {beyond} the spread)")
    print(ratios_line(ratios))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
