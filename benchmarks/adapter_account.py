"""Where the fused SPLoRA step's time above its floor goes: the step with one part at a time switched off.

``adapter_step.py`` times the step whole; this script subtracts. Variants, interleaved round-robin beside the floor
(ResNet-18, CIFAR stem, batch 32, 32 px, rank 8, as ``adapter_step.py``):

- ``splora``: the fused step as it trains (``spa.fused``);
- ``no_factor_gradients``: the backward returns zeros for dA and dB (``low_rank_gradients`` skipped);
- ``no_kernel_rewrite``: the kept kernel's centre tap is written once and never again (no ``B @ A`` per call);
- ``neither``: both off: what is left is the autograd Function's Python, the optimizer over 40 more tensors, and
  whatever the kept kernel costs the convs themselves;
- ``split_workers``: the factor gradients with the batch split into one part per torch thread, each part on its own
  one-thread worker (samples one at a time from cache), instead of whole-batch products on the torch threads. Tried in
  issue 14; it only differs from ``splora`` with more than one thread.

The switched-off variants compute wrong gradients: timing only. Each part's cost is the per-round median of
(splora - variant) / floor; ``rest`` is neither / floor - 1. Last line:
``splora_vs_floor=.. factor_gradients=.. kernel_rewrite=.. rest=.. split_workers_vs_floor=..``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import torch

from spa import fused
from spa.adapters import add_splora
from spa.models import build_resnet

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the helpers shared by the scripts beside this one
from _timing import add_clock_flag, add_timing_flags, last_line, timed_rounds  # noqa: E402
from adapter_step import floor, make_step  # noqa: E402

_write_centre, _low_rank_gradients = fused._Kept.write_centre, fused.low_rank_gradients


def _write_once(kept: fused._Kept, lora_a: torch.Tensor, lora_b: torch.Tensor, writer: object) -> torch.Tensor:
    if kept.writer is None:
        return _write_centre(kept, lora_a, lora_b, writer)
    kept.writer = writer
    return kept.kernel


def _zero_factor_gradients(grad_output, x, lora_a, lora_b, stride):  # type: ignore[no-untyped-def]
    return torch.zeros_like(lora_a), torch.zeros_like(lora_b)


def _one_thread(ready: threading.Barrier) -> None:
    torch.get_num_threads()  # a thread takes the default on its first call: first that, then one thread for good
    torch.set_num_threads(1)
    ready.wait()


class SplitWorkers:
    """``low_rank_gradients`` with the batch in one contiguous part per torch thread, each part on a worker thread
    with one torch thread (so a part's samples run one at a time, each read once into cache); parts summed in order."""

    def __init__(self, workers: int) -> None:
        threads, ready = torch.get_num_threads(), threading.Barrier(workers)
        self.pool = ThreadPoolExecutor(workers)
        for future in [self.pool.submit(_one_thread, ready) for _ in range(workers)]:  # one task per thread
            future.result()
        torch.set_num_threads(threads)  # set_num_threads also set the default later threads start with

    def __call__(self, grad_output, x, lora_a, lora_b, stride):  # type: ignore[no-untyped-def]
        parts = min(self.pool._max_workers, x.shape[0])
        if parts == 1 or torch.is_grad_enabled():
            return _low_rank_gradients(grad_output, x, lora_a, lora_b, stride)
        futures = [
            self.pool.submit(_low_rank_gradients, g, part, lora_a, lora_b, stride)
            for g, part in zip(grad_output.tensor_split(parts), x.tensor_split(parts), strict=True)
        ]
        results = [future.result() for future in futures]
        return sum(r[0] for r in results), sum(r[1] for r in results)


@contextmanager
def patched(write_centre: Callable | None = None, low_rank_gradients: Callable | None = None) -> Iterator[None]:
    fused._Kept.write_centre = write_centre or _write_centre  # type: ignore[method-assign]
    fused.low_rank_gradients = low_rank_gradients or _low_rank_gradients
    try:
        yield
    finally:
        fused._Kept.write_centre, fused.low_rank_gradients = _write_centre, _low_rank_gradients  # type: ignore[method-assign]


def under(step: Callable[[], None], **patches: Callable) -> Callable[[], None]:
    def run() -> None:
        with patched(**patches):
            step()

    return run


def per_round(times: dict[str, list[float]], name: str, minus: str | None = None) -> float:
    """Median over rounds of name / floor, or of (name - minus) / floor."""
    base = times["floor"]
    subtract = times[minus] if minus else [0.0] * len(base)
    return statistics.median((t - s) / f for t, s, f in zip(times[name], subtract, base, strict=True))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_clock_flag(parser)
    add_timing_flags(parser, threads=2, rounds=15, warmup=3)
    args = parser.parse_args(argv)
    if args.threads < 1:
        print(f"--threads must be >= 1, got {args.threads}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    def step(model: torch.nn.Module) -> Callable[[], None]:
        return make_step(model, 32, 32, 10)

    def splora() -> Callable[[], None]:
        return step(add_splora(build_resnet("resnet18", 10, cifar_stem=True), 8, 1e-3))

    steps = {
        "floor": step(floor(build_resnet("resnet18", 10, cifar_stem=True))),
        "splora": splora(),
        "no_factor_gradients": under(splora(), low_rank_gradients=_zero_factor_gradients),
        "no_kernel_rewrite": under(splora(), write_centre=_write_once),
        "neither": under(splora(), write_centre=_write_once, low_rank_gradients=_zero_factor_gradients),
        "split_workers": under(splora(), low_rank_gradients=SplitWorkers(args.threads)),
    }
    times = timed_rounds(steps, args)
    floor_median = statistics.median(times["floor"])
    for name, values in times.items():
        print(
            f"{name:>20}: median step {statistics.median(values) * 1e3:7.1f} ms, "
            f"{statistics.median(values) / floor_median:.3f} of the floor's, per round {per_round(times, name):.3f}"
        )
    values = {
        "splora_vs_floor": per_round(times, "splora"),
        "factor_gradients": per_round(times, "splora", "no_factor_gradients"),
        "kernel_rewrite": per_round(times, "splora", "no_kernel_rewrite"),
        "rest": per_round(times, "neither") - 1.0,
        "split_workers_vs_floor": per_round(times, "split_workers"),
    }
    print(last_line(values, digits=3))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
