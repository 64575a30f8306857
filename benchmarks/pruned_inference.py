"""Inference time of the physically pruned network against the unpruned one, next to the FLOPs ratio.

Goal: pruning must save time in proportion to the FLOPs it removes. For each density (0.5, 0.3, 0.1 by default)
the script prunes a copy of the network with ``spa.pruning.prune_to_density`` (channels physically removed) and
times one eval-mode forward under ``torch.inference_mode`` for every variant, interleaved round-robin with the
unpruned network, so machine noise hits all variants alike. Per density it prints

    time ratio = median time pruned / median time unpruned,   FLOPs ratio = spa.counting.flops pruned / unpruned,

and their quotient. Goal: ``time_over_flops <= 1.3`` at every density. Masking (zeroing pruned channels in place,
as the original code did) keeps every tensor's shape, so its time ratio stays 1.0 whatever the density.

Setting (chosen so the convolutions' compute dominates the per-call overhead): ResNet-50 with the CIFAR stem
(3x3/1, no max-pool), 10 classes, batch 64 at 32 px, random weights, 1 torch thread, weight-criterion scores
(BN-fused filter magnitude, per-layer L1 normalised), for a fine-pruned network (``finetune``) and for a SPLoRA
rank-8 network pruned and then merged (``spa.adapters.merge``: how it would be deployed). Every variant, the
unpruned one too, is timed in deployment form: BatchNorm folded into the preceding conv
(``torch.fx.experimental.optimization.fuse``) and channels-last tensors (oneDNN's fast path; with contiguous
tensors, odd pruned channel counts cost more). ``--no-fold-bn`` and ``--memory-format contiguous`` time the plain
eager network instead. FLOPs are counted on the unfolded network (the paper's definition, BatchNorm included).

It also prints the peak resident memory of one forward of each variant, each measured in a fresh process.

Last line: ``time_over_flops_0.5=.. time_over_flops_0.3=.. time_over_flops_0.1=..`` (the worst over the learners
timed).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import copy
import multiprocessing
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn
from torch.fx.experimental.optimization import fuse

from spa.adapters import add_splora, mark_trainable, merge
from spa.config import PruneConfig
from spa.counting import conv_channels, flops
from spa.criteria import normalize, score_channels
from spa.models import ARCHITECTURES, build_resnet
from spa.pruning import network_conv_names, prune_to_density

PRUNE = PruneConfig()  # the harness default floor of channels per conv

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the helpers shared by the scripts beside this one
from _timing import add_timing_flags, last_line, round_robin  # noqa: E402

CLASSES = 10


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--arch", default="resnet50", choices=tuple(ARCHITECTURES), help="architecture (default: resnet50)"
    )
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward (default: 64)")
    parser.add_argument("--size", type=int, default=32, help="input size in px, CIFAR stem (default: 32)")
    parser.add_argument(
        "--densities",
        type=float,
        nargs="+",
        default=[0.5, 0.3, 0.1],
        help="densities to prune to (default: 0.5 0.3 0.1)",
    )
    parser.add_argument(
        "--scores",
        choices=("weight", "random"),
        default="weight",
        help="channel scores: the weight criterion, or uniform random per channel (default: weight)",
    )
    parser.add_argument(
        "--learners",
        nargs="+",
        choices=("finetune", "splora"),
        default=["finetune", "splora"],
        help="finetune: the plain pruned network; splora: a rank-8 SPLoRA network pruned, then merged "
        "(default: finetune splora)",
    )
    add_timing_flags(parser, threads=1, rounds=10, warmup=2)
    parser.add_argument(
        "--memory-format",
        choices=("channels_last", "contiguous"),
        default="channels_last",
        help="memory format of weights and inputs (default: channels_last)",
    )
    parser.add_argument(
        "--fold-bn",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="fold BatchNorm into the convs before timing, as a deployment would (default: on)",
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement (default: off)")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights, adapters and random scores (default: 0)")
    return parser


# --- pure helpers ------------------------------------------------------------------------------------------------


def median_ratios(times: dict[str, list[float]], baseline: str) -> dict[str, float]:
    """Median time of every variant over the median time of ``baseline``."""
    base = statistics.median(times[baseline])
    return {name: statistics.median(values) / base for name, values in times.items()}


def time_over_flops(time_ratio: dict[str, float], flop_counts: dict[str, int]) -> dict[str, float]:
    """``{"time_over_flops_0.5": q, ...}``: per density, the worst over learners of time ratio / FLOPs ratio.

    Variants are named ``"unpruned"`` and ``"{learner}@{density}"``; both dicts are keyed by variant name."""
    worst: dict[str, float] = {}
    for name, ratio in time_ratio.items():
        if name == "unpruned":
            continue
        key = f"time_over_flops_{float(name.partition('@')[2]):g}"
        quotient = ratio / (flop_counts[name] / flop_counts["unpruned"])
        worst[key] = max(worst.get(key, quotient), quotient)
    return worst


def parse_last_line(line: str) -> dict[str, float]:
    """The inverse of ``last_line``: ``"a=1.00 b=2.50"`` -> ``{"a": 1.0, "b": 2.5}``."""
    pairs = [item.split("=", 1) for item in line.split()]
    bad = [item for item in pairs if len(item) != 2]
    if bad:
        raise ValueError(f"not a line of name=value pairs: {line!r}")
    return {name: float(value) for name, value in pairs}


# --- building the variants -----------------------------------------------------------------------------------------


def _scores(model: nn.Module, kind: str, generator: torch.Generator) -> dict[str, torch.Tensor]:
    if kind == "weight":
        return score_channels(model, [], "weight")  # the weight criterion reads no data
    raw = {name: torch.rand(conv.out_channels, generator=generator) for name, conv in network_conv_names(model).items()}
    return normalize(raw, "weight")


def pruned_variants(
    arch: str, learners: Sequence[str], densities: Sequence[float], size: int, scores: str, seed: int
) -> dict[str, nn.Module]:
    """``{"unpruned": ..., "finetune@0.5": ..., "splora@0.5": ...}``: eval-mode deployable networks."""
    torch.manual_seed(seed)
    base = build_resnet(arch, CLASSES, cifar_stem=True)
    reference = conv_channels(base)
    example = torch.zeros(1, 3, size, size)
    generator = torch.Generator().manual_seed(seed)
    variants: dict[str, nn.Module] = {"unpruned": base}
    for learner in learners:
        for density in densities:
            model = copy.deepcopy(base)
            if learner == "splora":
                add_splora(model, 8, 1e-3)
            else:
                mark_trainable(model, "finetune")
            prune_to_density(
                model, _scores(model, scores, generator), density, reference, example, min_channels=PRUNE.min_channels
            )
            if learner == "splora":
                merge(model)
            variants[f"{learner}@{density:g}"] = model
    for model in variants.values():
        model.eval().requires_grad_(False)
    return variants


def deployable(model: nn.Module, *, fold_bn: bool, channels_last: bool) -> nn.Module:
    """The network as it would be served: BatchNorm folded into its conv, weights in the chosen memory format."""
    if fold_bn:
        model = fuse(model)  # a traced copy with conv+bn pairs folded into one conv
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model.eval()


# --- peak memory (a fresh process per variant: a peak only ever grows, and the allocator keeps freed memory) ----


def _resident_mib() -> tuple[float, float]:
    """(current, peak) resident set of this process in MiB: VmRSS and VmHWM of /proc/self/status (Linux).

    Not ``resource.getrusage().ru_maxrss``: Linux carries that across fork and exec, so a spawned child would
    report its parent's peak."""
    fields: dict[str, float] = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = float(value.split()[0]) / 1024  # kB
    return fields["VmRSS"], fields["VmHWM"]


def _example_batch(batch: int, size: int, channels_last: bool) -> torch.Tensor:
    x = torch.randn(batch, 3, size, size)  # (B, 3, H, W)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _peak_rss_of_forward(path: str, batch: int, size: int, threads: int, channels_last: bool) -> tuple[float, float]:
    """(MiB resident after loading the model and the input, MiB peak resident after one forward)."""
    torch.set_num_threads(threads)
    model = torch.load(path, weights_only=False)
    x = _example_batch(batch, size, channels_last)
    loaded, _ = _resident_mib()
    with torch.inference_mode():
        model(x)
    return loaded, _resident_mib()[1]


def peak_memory(
    variants: dict[str, nn.Module], batch: int, size: int, threads: int, channels_last: bool
) -> dict[str, tuple[float, float]]:
    """Per variant, (MiB after load, MiB peak after one forward), each in a fresh spawned process."""
    if not Path("/proc/self/status").is_file():
        return {}
    context = multiprocessing.get_context("spawn")
    result: dict[str, tuple[float, float]] = {}
    with tempfile.TemporaryDirectory(prefix="pruned-inference-") as directory:
        for name, model in variants.items():
            path = str(Path(directory) / "model.pt")
            torch.save(model, path)
            with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
                result[name] = pool.submit(_peak_rss_of_forward, path, batch, size, threads, channels_last).result()
    return result


# --- command ---------------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    variants = pruned_variants(args.arch, args.learners, args.densities, args.size, args.scores, args.seed)
    input_size = (3, args.size, args.size)
    flop_counts = {name: flops(model, input_size) for name, model in variants.items()}
    channels = {name: conv_channels(model) for name, model in variants.items()}
    weight_mib = {
        name: sum(p.numel() * p.element_size() for p in m.parameters()) / 2**20 for name, m in variants.items()
    }
    channels_last = args.memory_format == "channels_last"
    variants = {
        name: deployable(model, fold_bn=args.fold_bn, channels_last=channels_last) for name, model in variants.items()
    }
    x = _example_batch(args.batch_size, args.size, channels_last)

    def forward(model: nn.Module) -> Callable[[], object]:
        def call() -> object:
            with torch.inference_mode():
                return model(x)

        return call

    print(
        f"{args.arch}, CIFAR stem, batch {args.batch_size} at {args.size} px, {args.threads} thread(s), "
        f"{args.scores} scores, {args.memory_format}, BatchNorm {'folded' if args.fold_bn else 'kept'}; "
        f"{args.rounds} rounds round-robin after {args.warmup} warm-up",
        flush=True,
    )
    times = round_robin({name: forward(model) for name, model in variants.items()}, args.rounds, args.warmup)
    time_ratio = median_ratios(times, "unpruned")
    memory = {} if args.no_memory else peak_memory(variants, args.batch_size, args.size, args.threads, channels_last)
    print(
        f"{'variant':>14} {'channels':>8} {'MFLOPs/img':>10} {'ms/batch':>9} {'time r.':>7} {'FLOPs r.':>8} "
        f"{'t/F':>5} {'weights MiB':>11} {'peak MiB':>8} {'fwd MiB':>7}"
    )
    for name in variants:
        flop_ratio = flop_counts[name] / flop_counts["unpruned"]
        loaded, peak = memory.get(name, (float("nan"), float("nan")))
        print(
            f"{name:>14} {channels[name]:>8} {flop_counts[name] / 1e6:>10.1f} "
            f"{statistics.median(times[name]) * 1e3:>9.1f} {time_ratio[name]:>7.3f} {flop_ratio:>8.3f} "
            f"{time_ratio[name] / flop_ratio:>5.2f} {weight_mib[name]:>11.1f} {peak:>8.0f} {peak - loaded:>7.0f}"
        )
    print(
        f"(peak MiB: peak resident set of a fresh process after one forward (torch itself included); fwd MiB: "
        f"its growth during the forward; "
        f"took {time.perf_counter() - started:.0f} s)"
    )
    print(last_line(time_over_flops(time_ratio, flop_counts)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
