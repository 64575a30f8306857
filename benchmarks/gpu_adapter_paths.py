"""Which SPLoRA training path is fastest on a CUDA GPU? Side by side with fine-tuning and the floor, plus a profile.

``gpu.py`` measured SPLoRA (the fused centre-tap conv of ``spa.fused``) at 0.37x fine-tuning's images/s on an H100
(ResNet-50, CIFAR stem, 32 px, batch 128, bf16, channels-last), where it should beat fine-tuning: it skips every
3x3 weight gradient. This script times the candidate paths in one process, interleaved, and profiles them:
- ``finetune``, ``floor`` (frozen convs, BatchNorm and head learn: what any adapter adds cost to);
- ``fused`` (``spa.fused`` as it is), ``fused_low_rank`` (its CPU backward, batched rank-space products, on CUDA);
- ``two_conv`` (``spa.fused`` off: base conv + two 1x1 convs, plain autograd);
- ``merged_autograd`` (``conv(x, W + pad(B @ A))`` under plain autograd: the full kernel's weight gradient);
- ``finetune_graphed``, ``floor_graphed``, ``fused_graphed``, ``two_conv_graphed``: forward, loss and backward
  replayed as one CUDA graph (``spa.graphs``), the optimizer step eager.
For each batch size: median step time over interleaved blocks, images/s, and each variant over fine-tuning; with
``--profile``, a ``torch.profiler`` table of the top CUDA kernels of the named variants at the first batch size.

Last line: ``best=<eager variant> best_over_finetune=.. fused_over_finetune=.. graphed_fused_over_graphed_finetune=..``
at the first batch size.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from spa import fused
from spa.adapters import add_splora
from spa.graphs import CapturedStep
from spa.models import build_resnet

sys.path.insert(0, str(Path(__file__).resolve().parent))
from adapter_step import floor  # noqa: E402
from gpu import time_blocks  # noqa: E402

FORMATS: collections.Counter = collections.Counter()


def _format(t: torch.Tensor) -> str:
    if t.is_contiguous(memory_format=torch.channels_last):
        return "cl"
    return "nchw" if t.is_contiguous() else "strided"


class _LowRankOnCuda(fused._CentreTapConv2d):
    """The fused forward; backward: input gradient from the conv library, factors by ``fused.low_rank_gradients``."""

    @staticmethod
    def backward(ctx, grad_output):  # type: ignore[override]
        x, lora_a, lora_b, adapted = ctx.saved_tensors  # the forward's order without a kept kernel
        dtype = grad_output.dtype
        FORMATS[(f"g:{_format(grad_output)}", f"x:{_format(x)}", f"w:{_format(adapted)}")] += 1
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad_output,
                x.to(dtype),
                adapted.to(dtype),
                None,
                ctx.stride,
                ctx.padding,
                (1, 1),
                False,
                (0, 0),
                1,
                (True, False, False),
            )[0].to(x.dtype)
        grad_a, grad_b = fused.low_rank_gradients(grad_output, x.to(dtype), lora_a, lora_b, ctx.stride)
        return grad_x, None, None, grad_a, grad_b, None, None, None


def _low_rank_conv(x, base, lora_a, lora_b, kernel=None):
    """As ``fused.centre_tap_conv2d`` is called; the kernel is built per call (no kept kernel)."""
    return _LowRankOnCuda.apply(x, base.weight, base.bias, lora_a, lora_b, base.stride, base.padding, None)


def _merged_conv(x, base, lora_a, lora_b, kernel=None):
    k = base.weight.shape[-1]
    delta = F.pad((lora_b.flatten(1) @ lora_a.flatten(1))[:, :, None, None], [k // 2] * 4)
    return F.conv2d(x, base.weight + delta, base.bias, base.stride, base.padding)


def _patched(conv: Callable | None) -> Callable[[Callable[[], None]], Callable[[], None]]:
    """Run a step with ``fused.centre_tap_conv2d`` replaced by ``conv`` (None: the module as it is)."""

    def wrap(step: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            original = fused.centre_tap_conv2d
            if conv is not None:
                fused.centre_tap_conv2d = conv
            try:
                step()
            finally:
                fused.centre_tap_conv2d = original

        return run

    return wrap


def make_step(model: nn.Module, batch: int, device: torch.device, fuse: bool, graphed: bool) -> Callable[[], None]:
    """One training step on a fixed batch, with ``spa.fused`` on or off; ``graphed``: forward, loss and backward
    replayed as one CUDA graph (``spa.graphs``, captured at the first call, with the same ``fuse``)."""
    model.to(device, memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
    x = torch.randn(batch, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), device=device)
    captured = CapturedStep(model, nn.CrossEntropyLoss(), bf16=True) if graphed else None

    def step() -> None:
        with fused.enabled(fuse):
            if captured is not None:
                captured(x, y)
            else:
                optimizer.zero_grad(set_to_none=True)
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    loss = F.cross_entropy(model(x), y)
                loss.backward()
        optimizer.step()

    return step


def timed(steps: dict[str, Callable[[], None]], blocks: int, per_block: int, warmup: int) -> dict[str, float]:
    """Median seconds per step of each variant: ``gpu.time_blocks`` over blocks of ``per_block`` steps, after
    ``warmup`` untimed steps of each."""

    def block(step: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            for _ in range(per_block):
                step()

        return run

    def warm(name: str) -> None:
        for _ in range(warmup):
            steps[name]()

    times, _ = time_blocks({name: block(step) for name, step in steps.items()}, blocks, warm, torch.device("cuda"))
    return {name: statistics.median(values) / per_block for name, values in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--batches", default="128,256", help="batch sizes, the first one profiled")
    parser.add_argument("--profile", default="", help="variants to profile at the first batch size, comma-separated")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--blocks", type=int, default=3)
    parser.add_argument("--per-block", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_adapter_paths.py needs a CUDA GPU, and torch.cuda.is_available() is False", file=sys.stderr)
        return 2
    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    print(f"card: {torch.cuda.get_device_name()}; torch {torch.__version__}", flush=True)
    patches = {
        "finetune": (None, True, "finetune"),
        "floor": (None, True, "floor"),
        "fused": (None, True, "splora"),
        "fused_low_rank": (_low_rank_conv, True, "splora"),
        "two_conv": (None, False, "splora"),
        "merged_autograd": (_merged_conv, True, "splora"),
        "finetune_graphed": (None, True, "finetune"),
        "floor_graphed": (None, True, "floor"),
        "fused_graphed": (None, True, "splora"),
        "two_conv_graphed": (None, False, "splora"),
    }
    first: dict[str, float] = {}
    for batch in [int(b) for b in args.batches.split(",")]:
        steps = {}
        for name, (conv, fuse, kind) in patches.items():
            torch.manual_seed(0)
            model = build_resnet(args.arch, 10, cifar_stem=True)
            if kind == "floor":
                model = floor(model)
            elif kind == "splora":
                model = add_splora(model, args.rank, 1e-3)
            steps[name] = _patched(conv)(make_step(model, batch, device, fuse, graphed=name.endswith("_graphed")))
        medians = timed(steps, args.blocks, args.per_block, args.warmup)
        for name, seconds in medians.items():
            print(
                f"batch {batch:4d} {name:>16}: {seconds * 1e3:7.2f} ms/step {batch / seconds:9.0f} images/s "
                f"{medians['finetune'] / seconds:5.2f}x finetune's images/s",
                flush=True,
            )
        if not first:
            first = medians
            for name in [n for n in args.profile.split(",") if n]:
                with torch.profiler.profile(
                    activities=[torch.profiler.ProfilerActivity.CUDA, torch.profiler.ProfilerActivity.CPU]
                ) as prof:
                    for _ in range(3):
                        steps[name]()
                    torch.cuda.synchronize()
                averages = prof.key_averages()
                table = averages.table(sort_by="self_device_time_total", row_limit=10, max_name_column_width=60)
                print(f"--- profile {name}, batch {batch}, 3 steps\n{table}", flush=True)
            if FORMATS:
                print(f"fused_low_rank backward formats (grad_output, x, kernel): {dict(FORMATS)}")
        del steps
        torch.cuda.empty_cache()
    best = min((n for n in first if n.startswith(("fused", "two_conv", "merged"))), key=first.get)
    print(
        f"best={best} best_over_finetune={first['finetune'] / first[best]:.2f} "
        f"fused_over_finetune={first['finetune'] / first['fused']:.2f} "
        f"graphed_fused_over_graphed_finetune={first['finetune_graphed'] / first['fused_graphed']:.2f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
