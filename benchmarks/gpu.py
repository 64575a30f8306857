"""Training throughput of SPLoRA against full fine-tuning on a CUDA GPU, eager and with ``torch.compile``.

Goal: on the hardware the paper's experiments need (ResNet-50 at 224 px), a SPLoRA training step must be no slower
than a fine-tuning step (ratio >= 1): the frozen base conv needs no weight gradient, while the adapter adds two thin
1x1 convs. The CPU benchmark ``adapter_step.py`` shows this at 32 px; this script checks it where the paper ran.

Setting: ResNet-50 (7x7/2 stem), 102 classes (Flowers-102), random weights, batch 64 at 224 px of synthetic
inputs already on the GPU (so the data pipeline does not count), SGD momentum 0.9, bf16 autocast, channels-last
weights and inputs, cuDNN autotuning. SPLoRA rank 8 on every conv (``spa.adapters.add_splora``); fine-tuning learns
every parameter. Variants are timed interleaved, round-robin in blocks of ``--steps`` steps (after ``--warmup``
untimed steps each; compiled variants compile during their warm-up), so clock and thermal drift hit all alike.
Throughput = images / second of the median block; ratios are SPLoRA's throughput over fine-tuning's (> 1: SPLoRA
trains faster). Also prints the card's name and each variant's peak allocated memory.

Last line: ``splora_over_finetune=.. splora_over_finetune_compiled=..`` (the second is ``nan`` with
``--no-compile``). Without CUDA it prints one line to stderr and exits 2.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence

import torch
from torch import nn

from spa.adapters import add_splora, mark_trainable
from spa.models import ARCHITECTURES, build_resnet


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--arch", default="resnet50", choices=tuple(ARCHITECTURES), help="architecture (default: resnet50)"
    )
    parser.add_argument("--batch-size", type=int, default=64, help="images per step (default: 64)")
    parser.add_argument("--size", type=int, default=224, help="input size in px (default: 224)")
    parser.add_argument("--classes", type=int, default=102, help="head size (default: 102, Flowers-102)")
    parser.add_argument("--rank", type=int, default=8, help="SPLoRA rank (default: 8)")
    parser.add_argument("--steps", type=int, default=20, help="steps per timed block (default: 20)")
    parser.add_argument("--rounds", type=int, default=5, help="timed blocks per variant (default: 5)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps per variant first (default: 10)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants (default: off)")
    parser.add_argument("--device", default="cuda", help="CUDA device (default: cuda)")
    return parser


# --- pure helpers ------------------------------------------------------------------------------------------------


def throughput(images: int, seconds: Sequence[float]) -> float:
    """Images per second of the median block, each block processing ``images`` images."""
    return images / statistics.median(seconds)


def throughput_ratios(images_per_second: dict[str, float]) -> dict[str, float]:
    """``splora_over_finetune`` (eager) and ``splora_over_finetune_compiled`` (NaN when not measured)."""

    def ratio(splora: str, finetune: str) -> float:
        if splora in images_per_second and finetune in images_per_second:
            return images_per_second[splora] / images_per_second[finetune]
        return float("nan")

    return {
        "splora_over_finetune": ratio("splora", "finetune"),
        "splora_over_finetune_compiled": ratio("splora_compiled", "finetune_compiled"),
    }


def last_line(values: dict[str, float], digits: int = 2) -> str:
    """``name=value`` pairs separated by single spaces, values rounded to ``digits`` decimals."""
    return " ".join(f"{name}={value:.{digits}f}" for name, value in values.items())


# --- the timed steps ---------------------------------------------------------------------------------------------


def build_model(arch: str, classes: int, learner: str, rank: int, device: torch.device) -> nn.Module:
    model = build_resnet(arch, classes)
    if learner == "splora":
        add_splora(model, rank, 1e-4)
    else:
        mark_trainable(model, "finetune")
    return model.to(device, memory_format=torch.channels_last).train()


def make_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, compiled: bool) -> Callable[[], None]:
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    forward = torch.compile(model) if compiled else model

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = loss_fn(forward(x), y)
        loss.backward()
        optimizer.step()

    return step


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu.py needs a CUDA GPU, and torch.cuda.is_available() is False on this machine", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    x = torch.randn(args.batch_size, 3, args.size, args.size, device=device)  # (B, 3, H, W)
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, args.classes, (args.batch_size,), device=device)
    variants = [("finetune", False), ("splora", False)]
    if not args.no_compile:
        variants += [("finetune", True), ("splora", True)]
    steps: dict[str, Callable[[], None]] = {}
    for learner, compiled in variants:
        model = build_model(args.arch, args.classes, learner, args.rank, device)
        steps[learner + ("_compiled" if compiled else "")] = make_step(model, x, y, compiled)
    print(f"card: {torch.cuda.get_device_name(device)}; torch {torch.__version__}", flush=True)
    print(
        f"{args.arch}, batch {args.batch_size} at {args.size} px, bf16 autocast, channels-last, SPLoRA rank "
        f"{args.rank}; {args.rounds} blocks of {args.steps} steps per variant, round-robin",
        flush=True,
    )
    for name, step in steps.items():
        started = time.perf_counter()
        for _ in range(args.warmup):
            step()
        torch.cuda.synchronize(device)
        print(f"warm-up {name}: {time.perf_counter() - started:.1f} s", flush=True)
    times: dict[str, list[float]] = {name: [] for name in steps}
    peak: dict[str, int] = dict.fromkeys(steps, 0)
    for _ in range(args.rounds):
        for name, step in steps.items():
            torch.cuda.reset_peak_memory_stats(device)
            torch.cuda.synchronize(device)
            started = time.perf_counter()
            for _ in range(args.steps):
                step()
            torch.cuda.synchronize(device)
            times[name].append(time.perf_counter() - started)
            peak[name] = max(peak[name], torch.cuda.max_memory_allocated(device))
    images = args.batch_size * args.steps
    rates = {name: throughput(images, values) for name, values in times.items()}
    for name, rate in rates.items():
        spread = max(times[name]) / min(times[name])
        print(f"{name:>18}: {rate:8.1f} images/s (max/min block {spread:.2f}), peak {peak[name] / 2**30:.1f} GiB")
    print(last_line(throughput_ratios(rates)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
