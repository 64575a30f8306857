"""What the study harness costs and gains: the same trials through ``study.tune`` vs a plain Optuna loop.

A fixed workload (SPLoRA ResNet-18 on the digits task, one pruning step, about 20 s of single-threaded training
per trial by default; only the learning rate is sampled) runs N times three ways in one process, one after the
other: a plain in-process ``optuna`` ask/tell loop calling ``spa.experiment.run_experiment``; ``study.tune`` at
concurrency 1; ``study.tune`` at concurrency 2 (one CPU and one torch thread per trial). The harness times include
everything a user waits for: starting Ray, the MLflow records, checkpoints and Pareto fronts.

Last line: ``overhead_c1=T(study, c=1)/T(plain) speedup_c2=T(plain)/T(study, c=2)``.
Goal: overhead_c1 <= 1.15 and speedup_c2 >= 1.7 (on 2 cores).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

SPACE = """
description = "harness benchmark: fixed workload, only lr sampled"
[fixed]
learner = "splora"
criterion = "weight"
rank = 8
init_range = 0.001
epochs = {epochs}
recovery_epochs = 1
densities = [0.5]
batch_size = 32
max_score_batches = 4
threads = 1
[params.lr]
type = "float"
low = 0.01
high = 0.05
log = true
"""


def plain_loop(space_path: Path, trials: int, cache_dir: str, seed: int) -> float:
    """The loop a user would write without the harness: Optuna ask/tell around the experiment, in process."""
    import optuna
    import torch

    from spa.config import ExperimentConfig
    from spa.experiment import run_experiment
    from study.spaces import load_space, suggest

    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = load_space(str(space_path))
    study = optuna.create_study(directions=space.directions, sampler=optuna.samplers.TPESampler(seed=seed))
    started = time.perf_counter()
    for _ in range(trials):
        trial = study.ask()
        config = {**suggest(space, trial), "cache_dir": cache_dir}
        final = run_experiment(ExperimentConfig.from_flat(config))[-1]
        study.tell(trial, [final[metric] for metric in space.metrics])
    return time.perf_counter() - started


def harness(space_path: Path, trials: int, concurrency: int, workdir: Path, cache_dir: str, seed: int) -> float:
    from study.tune import main as study_main

    name = f"overhead-c{concurrency}"
    argv = [
        "--space", str(space_path), "--name", name, "--num-samples", str(trials),
        "--max-concurrent", str(concurrency), "--cpus-per-trial", "1", "--seed", str(seed),
        "--storage-path", str(workdir / "ray_results"), "--tracking-uri", f"sqlite:///{workdir / 'mlflow.db'}",
        "--cache-dir", cache_dir,
    ]  # fmt: skip
    started = time.perf_counter()
    code = study_main(argv)
    elapsed = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"study.tune exited {code}")
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=4, help="trials per variant (default: 4)")
    parser.add_argument("--epochs", type=int, default=8, help="training epochs per trial, ~2 s each (default: 8)")
    parser.add_argument("--seed", type=int, default=0, help="sampler seed (default: 0)")
    args = parser.parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

    from spa.pretrain import PretrainConfig, default_cache_dir, pretrained_backbone

    cache_dir = str(default_cache_dir())
    pretrained_backbone(PretrainConfig(arch="resnet18"), cache_dir)  # not part of any timing
    # One-time import costs are not per-study overhead: pay them before any clock starts.
    import mlflow  # noqa: F401
    import optuna  # noqa: F401
    import ray.tune  # noqa: F401

    with tempfile.TemporaryDirectory(prefix="spa-overhead-") as temporary:
        workdir = Path(temporary)
        space_path = workdir / "overhead.toml"
        space_path.write_text(SPACE.format(epochs=args.epochs))
        plain = plain_loop(space_path, args.trials, cache_dir, args.seed)
        print(f"plain optuna loop:        {plain:7.1f} s for {args.trials} trials", file=sys.stderr)
        c1 = harness(space_path, args.trials, 1, workdir, cache_dir, args.seed)
        print(f"study.tune concurrency 1: {c1:7.1f} s", file=sys.stderr)
        c2 = harness(space_path, args.trials, 2, workdir, cache_dir, args.seed)
        print(f"study.tune concurrency 2: {c2:7.1f} s", file=sys.stderr)
    print(f"plain_s={plain:.1f} study_c1_s={c1:.1f} study_c2_s={c2:.1f} study_c1_over_c2={c1 / c2:.2f}")
    print(f"overhead_c1={c1 / plain:.2f} speedup_c2={plain / c2:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
