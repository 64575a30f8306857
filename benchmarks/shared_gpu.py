"""Do two trials share one GPU at ``--gpus-per-trial 0.5``? A real study, end to end, and each trial's peak memory.

Runs ``python -m study.tune --smoke`` (embedded digits, one epoch, one pruning step) with 2 trials at
``--gpus-per-trial 0.5`` (``--share``) on this machine's Ray, random weights (no pretraining), in a temporary
directory, then reads Tune's records of each trial (``result.json``): its peak GPU memory (``peak_gpu_mib``, which
``spa.experiment`` reports per step), its wall span, and whether the trials' spans overlapped, i.e. whether Ray
really placed them on the GPU at once. Not a timing benchmark: the figure is memory per trial and the overlap.

Last line: ``trials=.. overlapped=0|1 peak_gpu_mib_max=.. peak_gpu_mib_sum=..``. Exits 2 with one line without CUDA.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the helpers shared by the scripts beside this one
from _timing import last_line  # noqa: E402


@dataclass(frozen=True)
class TrialSpan:
    """One trial as Tune recorded it: when it started and ended (seconds since the epoch) and its peak memory."""

    name: str
    start: float
    end: float
    peak_gpu_mib: float


def trial_span(name: str, results: list[dict]) -> TrialSpan:
    """A trial's span from its ``result.json`` rows: the first row's end minus its own duration, to the last's end."""
    first, last = results[0], results[-1]
    start = float(first["timestamp"]) - float(first["time_this_iter_s"])
    return TrialSpan(name, start, float(last["timestamp"]), max(float(r.get("peak_gpu_mib", 0.0)) for r in results))


def overlapped(spans: list[TrialSpan]) -> bool:
    """Whether every trial ran while every other did (their spans share an instant)."""
    return bool(spans) and max(s.start for s in spans) < min(s.end for s in spans)


def read_spans(study_dir: Path) -> list[TrialSpan]:
    spans = []
    for path in sorted(glob.glob(str(study_dir / "trial-*" / "result.json"))):
        rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
        if rows:
            spans.append(trial_span(Path(path).parent.name.split("_")[0], rows))
    return spans


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--share", type=float, default=0.5, help="--gpus-per-trial of each trial (default: 0.5)")
    parser.add_argument("--trials", type=int, default=2, help="trials in the study (default: 2)")
    parser.add_argument("--cpus-per-trial", type=int, default=2, help="CPUs per trial (default: 2)")
    parser.add_argument("--timeout", type=int, default=240, help="seconds the study may take (default: 240)")
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("shared_gpu.py needs a CUDA GPU, and torch.cuda.is_available() is False on this machine", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="spa-shared-gpu-") as temporary:
        root = Path(temporary)
        command = [
            sys.executable, "-m", "study.tune", "--space", "splora_lrp", "--smoke", "--weights", "none",
            "--num-samples", str(args.trials), "--gpus-per-trial", str(args.share),
            "--cpus-per-trial", str(args.cpus_per_trial), "--name", "shared", "--storage-path", str(root / "runs"),
            "--cache-dir", str(root / "cache"), "--tracking-uri", f"sqlite:///{root / 'mlflow.db'}",
        ]  # fmt: skip
        environment = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
        environment.pop("RAY_ADDRESS", None)  # a Ray of its own on this machine
        done = subprocess.run(command, env=environment, timeout=args.timeout, capture_output=True, text=True)
        if done.returncode != 0:
            print(done.stdout[-3000:], done.stderr[-3000:], sep="\n", file=sys.stderr)
            print(f"the study exited {done.returncode}", file=sys.stderr)
            return 1
        spans = read_spans(root / "runs" / "shared")
    print(f"GPU: {torch.cuda.get_device_name(0)}, {args.trials} trials at --gpus-per-trial {args.share}")
    for span in spans:
        print(f"{span.name}: {span.end - span.start:6.1f} s, peak GPU memory {span.peak_gpu_mib:8.1f} MiB")
    peaks = [span.peak_gpu_mib for span in spans]
    print(
        f"trials={len(spans)} overlapped={int(overlapped(spans))} "
        + last_line({"peak_gpu_mib_max": max(peaks, default=0.0), "peak_gpu_mib_sum": sum(peaks)}, digits=1)
    )
    return 0 if len(spans) == args.trials else 1


if __name__ == "__main__":
    raise SystemExit(main())
