"""Training-step time of SPLoRA against its floor, fine-tuning and the reference package, side by side in one run.

The floor of any adapter method is the same network with frozen convs where only BatchNorm and the head learn.
Variants: ``finetune``; ``floor``; ``splora`` (ours as it trains: the fused centre-tap conv of ``spa.fused``, with
each layer's adapted kernel kept between steps); ``splora_fresh_kernel`` (fused, but the kernel built afresh every
call, as before it was kept); ``splora_two_conv`` (ours with the fusion off: the adapter as two 1x1 convs);
``reference`` (the `sp_adapters` package, W + dW materialised each forward). ResNet-18 with the CIFAR stem, batch
32, 32 px, 2 threads by default. The variants are timed interleaved (round-robin), so machine noise hits all of them
alike; the ratios of the medians are what to compare, never absolute times. Each variant's spread (max/min over
rounds) is printed too.

Last line: ``splora_vs_floor=R1 splora_vs_reference=R2``. Goals on CPU: R1 <= 1.10, R2 <= 0.60. The line before it
prints ``floor_vs_reference``: no adapter can go below the floor, so R2 can reach 0.60 only where that is <= 0.60.

``--compile`` adds ``floor_compiled`` and ``splora_compiled`` (``torch.compile``, ``--compile-backend``, as a trial's
``--compile`` runs), prints each one's compile time (its first step) and appends ``splora_compiled_vs_floor_compiled``
and ``splora_compiled_vs_reference`` to the last line: whether a compiled trial gets nearer the floor or the reference.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from spa import fused
from spa.adapters import SPLoRAConv2d, add_splora
from spa.config import COMPILE_BACKENDS
from spa.models import build_resnet

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the helpers shared by the scripts beside this one
from _timing import add_clock_flag, add_timing_flags, timed_rounds  # noqa: E402


def reference_splora(model: nn.Module, rank: int, init_range: float) -> nn.Module:
    """The same network with the `sp_adapters` package's SPLoRA convs (W + dW materialised each forward)."""
    from sp_adapters import SPLoRAConv2d as ReferenceConv2d

    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Conv2d):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, ReferenceConv2d.from_module(module, rank=rank, init_range=init_range))
    for parameter in model.parameters():
        parameter.requires_grad = False
    for module in model.modules():
        if hasattr(module, "adapter"):
            module.adapter.requires_grad_(True)
        if isinstance(module, nn.BatchNorm2d):
            module.requires_grad_(True)
    model.fc.requires_grad_(True)
    return model


def floor(model: nn.Module) -> nn.Module:
    """Frozen convs; only the BatchNorm affine parameters and the head learn: what every adapter adds cost to."""
    model.requires_grad_(False)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.requires_grad_(True)
    model.fc.requires_grad_(True)
    return model


def fresh_kernels(model: nn.Module) -> nn.Module:
    """No kept kernels: every fused call builds ``W + B @ A`` afresh (``spa.fused.centre_tap_conv2d`` without one)."""
    for module in model.modules():
        if isinstance(module, SPLoRAConv2d):
            module.adapted_kernel = None
    return model


def make_step(
    model: nn.Module, batch: int, size: int, classes: int, *, fuse: bool = True, compile_backend: str | None = None
) -> Callable[[], None]:
    """One SGD step on a fixed batch; with ``compile_backend``, the model runs ``torch.compile``d by it."""
    model.train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, classes, (batch,))
    loss_fn = nn.CrossEntropyLoss()
    forward = model if compile_backend is None else torch.compile(model, backend=compile_backend)

    def step() -> None:
        with fused.enabled(fuse):
            optimizer.zero_grad(set_to_none=True)
            loss_fn(forward(x), y).backward()
            optimizer.step()

    return step


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet18", help="architecture (default: resnet18)")
    parser.add_argument("--batch-size", type=int, default=32, help="batch size (default: 32)")
    parser.add_argument("--size", type=int, default=32, help="input size in px (default: 32)")
    parser.add_argument(
        "--stem",
        choices=("cifar", "imagenet"),
        default="cifar",
        help="cifar: 3x3/1 stem, no max-pool, as the paper's 32 px runs; imagenet: 7x7/2 + max-pool (default: cifar)",
    )
    parser.add_argument("--rank", type=int, default=8, help="SPLoRA rank (default: 8)")
    parser.add_argument(
        "--compile", action="store_true", help="add the floor and SPLoRA torch.compile'd, with their compile times"
    )
    parser.add_argument(
        "--compile-backend",
        choices=COMPILE_BACKENDS,
        default="inductor",
        help="the torch.compile backend of --compile (default: inductor)",
    )
    add_clock_flag(parser)
    add_timing_flags(parser, threads=2, rounds=15, warmup=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    classes = 10
    cifar_stem = args.stem == "cifar"

    def network() -> nn.Module:
        return build_resnet(args.arch, classes, cifar_stem=cifar_stem)

    variants = {
        "finetune": (network(), True),
        "floor": (floor(network()), True),
        "splora": (add_splora(network(), args.rank, 1e-3), True),
        "splora_fresh_kernel": (fresh_kernels(add_splora(network(), args.rank, 1e-3)), True),
        "splora_two_conv": (add_splora(network(), args.rank, 1e-3), False),
        "reference": (reference_splora(network(), args.rank, 1e-3), True),
    }
    steps = {
        name: make_step(model, args.batch_size, args.size, classes, fuse=fuse)
        for name, (model, fuse) in variants.items()
    }
    if args.compile:
        for name, model in (("floor", floor(network())), ("splora", add_splora(network(), args.rank, 1e-3))):
            steps[f"{name}_compiled"] = step = make_step(
                model, args.batch_size, args.size, classes, compile_backend=args.compile_backend
            )
            started = time.perf_counter()
            step()
            print(f"{name}_compiled: compile and first step {time.perf_counter() - started:.1f} s", flush=True)
    times = timed_rounds(steps, args)
    medians = {name: statistics.median(values) for name, values in times.items()}
    for name, value in medians.items():
        spread = max(times[name]) / min(times[name])
        print(f"{name:>16}: median step {value * 1e3:7.1f} ms over {len(times[name])} rounds, spread {spread:.2f}")
    ratios = {name: medians[name] / medians["floor"] for name in ("finetune", "splora_two_conv", "reference")}
    print(" ".join(f"{name}_vs_floor={value:.2f}" for name, value in ratios.items()))
    print(
        f"splora_vs_finetune={medians['splora'] / medians['finetune']:.2f} "
        f"splora_vs_two_conv={medians['splora'] / medians['splora_two_conv']:.2f} "
        f"fresh_kernel_vs_floor={medians['splora_fresh_kernel'] / medians['floor']:.2f}"
    )
    for name in ("splora", "splora_fresh_kernel"):
        paired = sorted(s / f for s, f in zip(times[name], times["floor"], strict=True))
        quartiles = statistics.quantiles(paired, n=4) if len(paired) > 1 else [paired[0]] * 3
        print(f"{name}/floor per round: median {quartiles[1]:.3f}, quartiles {quartiles[0]:.3f}-{quartiles[2]:.3f}")
    print(f"floor_vs_reference={medians['floor'] / medians['reference']:.2f}")
    r1 = medians["splora"] / medians["floor"]
    r2 = medians["splora"] / medians["reference"]
    compiled = ""
    if args.compile:
        splora_compiled = medians["splora_compiled"]
        compiled = (
            f" splora_compiled_vs_floor_compiled={splora_compiled / medians['floor_compiled']:.2f}"
            f" splora_compiled_vs_reference={splora_compiled / medians['reference']:.2f}"
        )
    print(f"splora_vs_floor={r1:.2f} splora_vs_reference={r2:.2f}{compiled}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
