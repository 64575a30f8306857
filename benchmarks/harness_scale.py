"""Does the driver scale to a thousand trials? The front computation, and null trials through Tune with tracking.

Two parts, one run:

1. Front update: ``study.pareto.front_frame`` over N synthetic step points (accuracy rounded to 4 decimals, so ties;
   learned parameters as integers) with the two-objective sort and sweep ("after") against the pairwise O(n^2)
   check that ``pareto_mask`` used before ("before": ``study.pareto._dominated_by_any``, the same code), interleaved
   round-robin; and ``study.front.FrontBook``: the mean time to add one step point to the tracker's book of N.
2. Driver: a study of null trials (a function trainable that reports ``--steps`` synthetic pruning steps without
   training) through Ray Tune with the project's searcher (``StudySearcher``, random sampler) and tracking callback
   (``StudyTracker``: MLflow in SQLite, fronts rewritten at every trial end) and, as ``study.tune`` does, the
   driver's heap frozen once set up (``study.driver_heap``), at each size in ``--trials``. Driver
   time per trial = wall time of ``Tuner.fit`` / trials. The event loop's longest stall is the longest gap between
   two calls of a callback's ``on_step_begin`` (Tune calls it once per loop iteration, on the driver); the tracker's
   hooks are timed (``--slow-s`` prints each hook's timings and the stack of any slow call), and so are the garbage
   collector's pauses, so the part of that stall spent in our code shows. ``--untracked-baseline`` runs each study
   again without the tracker: Tune's own stalls and time per trial, side by side.

Last line: ``front_update_s_20000=.. driver_s_per_trial_100=.. driver_s_per_trial_1000=.. longest_stall_s_100=..
longest_stall_s_1000=..`` (front_frame's time after the change; the sizes given by ``--points`` and ``--trials``).
Goals (issue 12): front update over 20,000 points <= 0.5 s; driver time per trial at 1,000 trials <= 1.5x that at
100; no event-loop stall > 1 s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from ray.tune import Callback

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import round_robin  # noqa: E402

METRICS, MODES = ["val_accuracy", "learned_params"], ["max", "min"]

SPACE = """
description = "harness_scale: null trials (the trainable ignores these settings)"
[fixed]
learner = "splora"
criterion = "weight"
epochs = 1
[params.lr]
type = "float"
low = 0.001
high = 0.1
log = true
[params.rank]
type = "int"
low = 2
high = 64
log = true
"""


# --- part 1: the front ---------------------------------------------------------------------------------------------


def synthetic_points(n: int, seed: int = 0) -> pd.DataFrame:
    """n step points shaped like a study's: 19 steps per trial, accuracy falling and parameters shrinking by step."""
    rng = np.random.default_rng(seed)
    trial = np.arange(n) // 19
    step = np.arange(n) % 19
    base = rng.uniform(0.5, 0.98, size=trial.max() + 1)[trial]
    accuracy = np.clip(base - 0.01 * step * rng.uniform(0.2, 1.5, size=n), 0, 1).round(4)
    params = (rng.integers(2_000, 300_000, size=trial.max() + 1)[trial] * 0.85**step).astype(int)
    return pd.DataFrame(
        {"run_id": [f"r{t}" for t in trial], "step": step, "val_accuracy": accuracy, "learned_params": params}
    )


def pairwise_front_frame(df: pd.DataFrame) -> pd.DataFrame:
    """front_frame as it was: the O(n^2) dominance check over both objectives."""
    from study.pareto import _dominated_by_any

    losses = df[METRICS].to_numpy(dtype=float) * np.array([-1.0, 1.0])
    valid = ~np.isnan(losses).any(axis=1)
    mask = np.zeros(len(df), dtype=bool)
    mask[np.flatnonzero(valid)] = ~_dominated_by_any(losses[valid])
    return df[mask].sort_values([METRICS[1], METRICS[0]], kind="mergesort").reset_index(drop=True)


def book_add_seconds(points: pd.DataFrame, last: int = 1000) -> float:
    """Mean seconds to add one step point to the tracker's FrontBook, over the last ``last`` of the points (book
    near full size)."""
    from study.front import FrontBook

    book = FrontBook(METRICS, MODES)
    rows = points.to_dict("records")
    for row in rows[:-last]:
        book.add(row["run_id"], int(row["step"]), row)
    started = time.perf_counter()
    for row in rows[-last:]:
        book.add(row["run_id"], int(row["step"]), row)
    return (time.perf_counter() - started) / last


def front_timings(sizes: list[int], rounds: int, before_up_to: int) -> dict[str, float]:
    from study.pareto import front_frame

    figures: dict[str, float] = {}
    for size in sizes:
        points = synthetic_points(size)
        calls = {"after": lambda p=points: front_frame(p, METRICS, MODES)}
        if size <= before_up_to:
            calls["before"] = lambda p=points: pairwise_front_frame(p)
            assert front_frame(points, METRICS, MODES).equals(pairwise_front_frame(points)), "fronts differ"
        times = round_robin(calls, rounds=rounds, warmup=1 if size <= 5_000 else 0)
        for name, values in times.items():
            figures[f"{name}_{size}"] = statistics.median(values)
        figures[f"book_add_{size}"] = book_add_seconds(points, last=min(1000, size // 2))
        shown = ", ".join(f"{name} {statistics.median(values):.3f} s" for name, values in times.items())
        print(f"front_frame over {size:,} points: {shown}; FrontBook.add at that size "
              f"{figures[f'book_add_{size}'] * 1e6:.1f} us", file=sys.stderr, flush=True)  # fmt: skip
    return figures


# --- part 2: the driver --------------------------------------------------------------------------------------------


def null_trial(config: dict, null_steps: int) -> None:
    """Reports ``steps`` + 1 synthetic pruning steps without training (what run_trial reports, minus the work)."""
    import random

    from ray import tune

    steps = null_steps
    rng = random.Random(config["trial_number"])
    accuracy, params = rng.uniform(0.5, 0.98), rng.randint(2_000, 300_000)
    for step in range(steps + 1):
        tune.report(
            {
                "step": step,
                "final_step": steps,
                "val_accuracy": round(accuracy - 0.01 * step * rng.uniform(0.2, 1.5), 4),
                "test_accuracy": accuracy,
                "learned_params": int(params * 0.85**step),
                "params": int(params * 10 * 0.85**step),
                "flops": 1e6 * 0.85**step,
                "density": 0.85**step,
            }
        )


def driver_seconds(
    trials: int,
    steps: int,
    concurrency: int,
    workdir: Path,
    seed: int,
    *,
    tracked: bool = True,
    slow_s: float | None = None,
) -> tuple[float, LoopGaps]:
    """(wall seconds of Tuner.fit, the event loop's gaps) for a study of null trials; ``tracked=False`` leaves the
    tracker out (Tune and the searcher alone: the stalls that are Tune's own)."""
    import optuna
    from ray import tune

    from study.driver_heap import FrozenHeap
    from study.searcher import StudySearch, StudySearcher
    from study.spaces import load_space
    from study.tracking import StudyTracker

    name = f"scale-{trials}" + ("" if tracked else "-untracked")
    space_path = workdir / "null.toml"
    space_path.write_text(SPACE)
    space = load_space(str(space_path))
    study_dir = workdir / name
    study_dir.mkdir(parents=True)
    searcher = StudySearcher(
        space,
        sampler=optuna.samplers.RandomSampler(seed=seed),
        storage=optuna.storages.RDBStorage(f"sqlite:///{study_dir / 'optuna.db'}"),
        study_name=name,
    )
    tracker = StudyTracker(
        tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}",
        experiment_name=name,
        study_name=name,
        study_id=name,
        study_dir=study_dir,
        metrics=space.metrics,
        modes=space.modes,
        scheduler="fifo",
        params={"trials": trials},
        tags={},
    )
    loop = LoopGaps(slow_s)
    if tracked:
        loop.time_hooks(tracker)
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(null_trial, null_steps=steps), {"cpu": 2 / concurrency}),
        tune_config=tune.TuneConfig(
            search_alg=StudySearch(searcher, max_concurrent=concurrency, num_samples=trials),
            num_samples=trials,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=str(workdir / "ray_results"),
            callbacks=[tracker, loop, FrozenHeap()] if tracked else [loop, FrozenHeap()],
            verbose=0,
        ),
    )
    started = time.perf_counter()
    try:
        tuner.fit()
    finally:
        loop.stop()
    return time.perf_counter() - started, loop


class LoopGaps(Callback):
    """The longest time between two event-loop iterations on the driver (Tune calls on_step_begin once per
    iteration), and how much of it the timed callback's hooks took: the rest of a stall is Tune's own work (trial
    actors, its experiment-state save) or the machine's load. Each timed hook's calls are kept (``hook_seconds``),
    and with ``slow_s`` a watcher thread prints the driver's stack once a hook call has run that long, so a stall
    names its line."""

    def __init__(self, slow_s: float | None = None) -> None:
        self.last: float | None = None
        self.longest = 0.0
        self.hooks_in_longest = 0.0  # seconds the timed hooks ran inside the longest gap
        self._hooks_since_last = 0.0
        self.hook_seconds: dict[str, list[float]] = {}
        self.slow_s = slow_s
        self.slow_stacks: list[str] = []
        self._current: tuple[str, float, int] | None = None  # (hook, started, thread id) of the call running now
        self.gc_seconds: dict[int, list[float]] = {}  # by generation: the collector's pauses in the driver
        self._gc_started = 0.0
        self.gc_in_longest = 0.0  # seconds of garbage collection inside the longest gap
        self._gc_since_last = 0.0
        import gc

        gc.callbacks.append(self._gc)  # until stop()

    def time_hooks(self, callback: Callback) -> None:
        """Wrap ``callback``'s Tune hooks (on the instance) so their time counts toward the gap they fall in."""
        for name in [n for n in dir(callback) if n.startswith("on_") or n in ("get_state", "setup")]:
            hook = getattr(callback, name)
            if callable(hook):
                setattr(callback, name, self._timed(name, hook))
        if self.slow_s is not None:
            import threading

            threading.Thread(target=self._watch, name="slow-hook-watcher", daemon=True).start()

    def _timed(self, name: str, hook):
        import threading

        def timed(*args, **kwargs):
            started = time.perf_counter()
            self._current = (name, started, threading.get_ident())
            try:
                return hook(*args, **kwargs)
            finally:
                self._current = None
                elapsed = time.perf_counter() - started
                self._hooks_since_last += elapsed
                self.hook_seconds.setdefault(name, []).append(elapsed)

        return timed

    def _gc(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        else:
            elapsed = time.perf_counter() - self._gc_started
            self.gc_seconds.setdefault(info["generation"], []).append(elapsed)
            self._gc_since_last += elapsed

    def stop(self) -> None:
        """Stop timing the garbage collector (it is process-wide)."""
        import gc

        if self._gc in gc.callbacks:
            gc.callbacks.remove(self._gc)

    def _watch(self) -> None:
        """Every slow_s / 4, look at the running hook call; past slow_s, keep the driver thread's stack (once)."""
        import traceback

        seen = None
        while True:
            time.sleep(self.slow_s / 4)
            current = self._current
            if current is None or current == seen or time.perf_counter() - current[1] < self.slow_s:
                continue
            seen = current
            frame = sys._current_frames().get(current[2])
            if frame is not None:
                stack = "".join(traceback.format_stack(frame)[-12:])
                self.slow_stacks.append(f"{current[0]} running {self.slow_s} s:\n{stack}")

    def hook_summary(self) -> str:
        """One line per hook: calls, total, median, 99th percentile and maximum seconds."""
        lines = []
        for name, values in sorted(self.hook_seconds.items(), key=lambda item: -max(item[1])):
            ordered = sorted(values)
            p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
            lines.append(f"  {name}: {len(values)} calls, {sum(values):.2f} s, median {statistics.median(values):.4f}"
                         f" s, p99 {p99:.3f} s, max {ordered[-1]:.3f} s")  # fmt: skip
        for generation, values in sorted(self.gc_seconds.items()):
            lines.append(f"  garbage collection, generation {generation}: {len(values)} pauses, {sum(values):.2f} s, "
                         f"max {max(values):.3f} s")  # fmt: skip
        lines.append(f"  in the longest gap: {self.hooks_in_longest:.3f} s in hooks, {self.gc_in_longest:.3f} s "
                     "collecting garbage (the two overlap when a collection runs inside a hook)")  # fmt: skip
        return "\n".join(lines)

    def on_step_begin(self, iteration, trials, **info) -> None:
        now = time.perf_counter()
        if self.last is not None and now - self.last > self.longest:
            self.longest, self.hooks_in_longest = now - self.last, self._hooks_since_last
            self.gc_in_longest = self._gc_since_last
        self.last, self._hooks_since_last, self._gc_since_last = now, 0.0, 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--points", type=int, nargs="+", default=[5_000, 20_000], help="front sizes (default: 5000 20000)"
    )
    parser.add_argument(
        "--before-up-to", type=int, default=20_000, help="time the O(n^2) front up to this size (default: 20000)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the front timings (default: 3)")
    parser.add_argument("--trials", type=int, nargs="+", default=[100, 1000], help="study sizes (default: 100 1000)")
    parser.add_argument("--steps", type=int, default=19, help="pruning steps per null trial (default: 19)")
    parser.add_argument("--concurrency", type=int, default=4, help="null trials at once (default: 4)")
    parser.add_argument("--seed", type=int, default=0, help="sampler seed (default: 0)")
    parser.add_argument(
        "--untracked-baseline",
        action="store_true",
        help="also run each study without the tracker, so Tune's own stalls and time per trial show (default: off)",
    )
    parser.add_argument(
        "--slow-s",
        type=float,
        default=None,
        help="print the driver's stack whenever a tracker hook call runs this long, and each hook's timings "
        "(default: off)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a check, not a measurement: fronts of 5000 points, the O(n^2) one up to 5000, 1 round, studies of "
        "10 and 30 trials of 4 steps (default: off)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.points, args.before_up_to, args.rounds, args.trials, args.steps = [5_000], 5_000, 1, [10, 30], 4
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

    figures = front_timings(args.points, args.rounds, args.before_up_to)

    import logging

    import optuna
    import ray

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("ray.tune").setLevel(logging.WARNING)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory(prefix="spa-scale-") as temporary:
            for trials in args.trials:
                seconds, loop = driver_seconds(
                    trials, args.steps, args.concurrency, Path(temporary), args.seed, slow_s=args.slow_s
                )
                figures[f"driver_s_per_trial_{trials}"] = seconds / trials
                figures[f"longest_stall_s_{trials}"] = loop.longest
                figures[f"tracker_s_in_longest_stall_{trials}"] = loop.hooks_in_longest
                print(f"{trials} null trials x {args.steps + 1} reports: {seconds:.1f} s, {seconds / trials:.3f} "
                      f"s/trial, longest event-loop gap {loop.longest:.2f} s ({loop.hooks_in_longest:.2f} s of it in "
                      "the tracker)", file=sys.stderr, flush=True)  # fmt: skip
                if args.slow_s is not None:
                    print(loop.hook_summary(), *loop.slow_stacks, sep="\n", file=sys.stderr, flush=True)
                if args.untracked_baseline:
                    seconds, loop = driver_seconds(
                        trials, args.steps, args.concurrency, Path(temporary), args.seed, tracked=False
                    )
                    figures[f"untracked_s_per_trial_{trials}"] = seconds / trials
                    figures[f"untracked_longest_stall_s_{trials}"] = loop.longest
                    print(f"  without the tracker: {seconds / trials:.3f} s/trial, longest event-loop gap "
                          f"{loop.longest:.2f} s", file=sys.stderr, flush=True)  # fmt: skip
    finally:
        ray.shutdown()

    for size in args.points:
        if f"before_{size}" in figures:
            print(f"front_speedup_{size}={figures[f'before_{size}'] / figures[f'after_{size}']:.1f}")
    print(" ".join(f"{key}={value:.4g}" for key, value in figures.items() if not key.startswith("front_update")))
    last = [f"front_update_s_{size}={figures[f'after_{size}']:.4f}" for size in args.points[-1:]]
    last += [f"driver_s_per_trial_{trials}={figures[f'driver_s_per_trial_{trials}']:.3f}" for trials in args.trials]
    last += [f"longest_stall_s_{trials}={figures[f'longest_stall_s_{trials}']:.2f}" for trials in args.trials]
    print(" ".join(last))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
