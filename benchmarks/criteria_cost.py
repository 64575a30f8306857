"""Cost of scoring channels with each criterion, per image, relative to one training step per image.

Goal: ranking must not dominate an experiment. The reference ranks with one full pass over the training data
before every pruning step; LRP (zennit, BN-fused merged copy, rule hooks) is the expensive one. Goal:
``lrp <= 2`` (scoring an image with LRP costs at most two SGD training steps on it).

Setting (default): a SPLoRA rank-8 ResNet-18 as the digits transfer task builds it (plain 7x7/2 stem and max-pool,
5 classes, random weights: the cost does not depend on their values) on a fixed set of real digits batches
(``spa.data``'s ``digits`` training split, 32 px, batch 32, 8 batches), 2 torch threads. One round times, in turn:

- ``train``: one SGD step (momentum 0.9, train mode, the SPLoRA learned parameters) on each batch of the set;
- each criterion: ``spa.criteria.score_channels(model, batches, criterion)`` over the same set (eval mode, as the
  experiment ranks; ``weight`` reads no data, and LRP's per-call set-up, a merged deep copy, is included and
  amortised over the set, as over a full pass in an experiment).

Rounds are interleaved, so machine noise hits all alike; per image, ratio = median time of the criterion / median
time of the training steps (the same images, so per-image and per-set ratios are equal).

Last line: ``weight=.. grad=.. taylor=.. lrp=..``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from spa.adapters import add_splora, mark_trainable
from spa.criteria import CRITERIA, score_channels
from spa.data import load_splits
from spa.models import ARCHITECTURES, build_resnet

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the helpers shared by the scripts beside this one
from _timing import add_timing_flags, last_line, round_robin  # noqa: E402

Batch = tuple[torch.Tensor, torch.Tensor]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--arch", default="resnet18", choices=tuple(ARCHITECTURES), help="architecture (default: resnet18)"
    )
    parser.add_argument(
        "--learner",
        choices=("splora", "finetune"),
        default="splora",
        help="splora: rank-8 adapters on every conv; finetune: the plain network (default: splora)",
    )
    parser.add_argument("--batch-size", type=int, default=32, help="images per batch (default: 32)")
    parser.add_argument("--batches", type=int, default=8, help="batches in the fixed set (default: 8)")
    parser.add_argument(
        "--cifar-stem",
        action="store_true",
        help="3x3/1 stem without max-pool (16x the FLOPs at 32 px) instead of the digits task's (default: off)",
    )
    add_timing_flags(parser, threads=2, rounds=7, warmup=1, rounds_help="timed rounds")
    return parser


# --- pure helpers ------------------------------------------------------------------------------------------------


def cost_ratios(times: dict[str, list[float]], baseline: str = "train") -> dict[str, float]:
    """Median time of every call but ``baseline`` over the median time of ``baseline``."""
    base = statistics.median(times[baseline])
    return {name: statistics.median(values) / base for name, values in times.items() if name != baseline}


# --- the timed calls -----------------------------------------------------------------------------------------------


def fixed_batches(batch_size: int, count: int) -> list[Batch]:
    """The first ``count * batch_size`` digits training images, in order, with eval transforms."""
    splits = load_splits("digits", seed=0)
    dataset = splits.train_eval
    available = len(dataset) // batch_size
    if count > available:
        raise SystemExit(f"--batches {count} at --batch-size {batch_size} exceeds the {available} full batches")
    images, labels = zip(*(dataset[i] for i in range(count * batch_size)), strict=True)
    x, y = torch.stack(images), torch.stack(labels)  # (N, 3, 32, 32), (N,)
    return [(x[k : k + batch_size], y[k : k + batch_size]) for k in range(0, len(x), batch_size)]


def training_pass(model: nn.Module, batches: Sequence[Batch]) -> Callable[[], None]:
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()

    def run() -> None:
        model.train()
        for x, y in batches:
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model(x), y).backward()
            optimizer.step()

    return run


def scoring_pass(model: nn.Module, batches: Sequence[Batch], criterion: str) -> Callable[[], None]:
    def run() -> None:
        score_channels(model, batches, criterion)

    return run


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    started = time.perf_counter()
    batches = fixed_batches(args.batch_size, args.batches)
    model = build_resnet(args.arch, 5, cifar_stem=args.cifar_stem)
    if args.learner == "splora":
        add_splora(model, 8, 1e-3)
    else:
        mark_trainable(model, "finetune")
    calls = {"train": training_pass(model, batches)}
    calls.update({name: scoring_pass(model, batches, name) for name in CRITERIA})
    images = sum(len(y) for _, y in batches)
    print(
        f"{args.learner} {args.arch}, {'CIFAR' if args.cifar_stem else 'digits (7x7/2 + max-pool)'} stem, "
        f"{args.batches} batches of {args.batch_size} digits at 32 px, {args.threads} thread(s); "
        f"{args.rounds} rounds round-robin after {args.warmup} warm-up",
        flush=True,
    )
    times = round_robin(calls, args.rounds, args.warmup)
    ratios = cost_ratios(times)
    for name, values in times.items():
        median = statistics.median(values)
        spread = max(values) / min(values)
        ratio = "1 (baseline)" if name == "train" else f"{ratios[name]:.2f}"
        print(f"{name:>7}: {median / images * 1e3:7.2f} ms/image (max/min over rounds {spread:.2f}), ratio {ratio}")
    print(f"(took {time.perf_counter() - started:.0f} s)")
    print(last_line({name: ratios[name] for name in CRITERIA}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
