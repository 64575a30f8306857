"""Does a trial keep a CUDA GPU busy? Data path, model and end to end, SPLoRA against fine-tuning, side by side.

Goals (an H100): end-to-end images/s >= 0.9 of model-only for the GPU-resident data path; SPLoRA >= 1.3x
fine-tuning images/s; a paper-protocol CIFAR-10 trial (30 epochs, then 19 pruning steps of 20 recovery epochs)
<= 20 minutes.

Two settings, both on CIFAR-10-shaped data generated in memory (random uint8 images and labels; no download):
- ``cifar32``: ResNet-50 with the CIFAR stem at 32 px (the paper's CIFAR runs), batch ``--batch-32``;
- ``r50_224``: ResNet-50 (7x7/2 stem) at 224 px, the same 32 px images upsampled, batch ``--batch-224``.
Random weights, 10 classes, SGD momentum 0.9, bf16 autocast, channels-last, cuDNN autotuning; SPLoRA rank
``--rank`` on every conv (``spa.adapters.add_splora``, the fused centre-tap conv of ``spa.fused``), fine-tuning
learns every parameter. For each setting:
- loader only (images/s onto the GPU, no model): the PIL ``DataLoader`` a trial uses today (``spa.data``'s
  RandomCrop(32, padding=4) + flip + ToTensor + Normalize per image, + Resize(224) for ``r50_224``; pinned memory)
  with 0 and ``--workers`` workers, and the GPU-resident ``spa.gpu_data.DeviceLoader`` (+ bilinear upsampling on
  the GPU for ``r50_224``);
- model only: training steps on one batch already on the GPU;
- end to end: training steps fed by the GPU-resident loader, and by the PIL loader with ``--workers`` workers,
  without a host sync per step (as ``spa.training.train_one_epoch`` on CUDA: the loss stays on the GPU);
- the model-only and GPU-resident end-to-end variants again with ``cuda_graphs`` (``spa.graphs``: forward, loss and
  backward replayed as one CUDA graph), the path that keeps a GPU busy: the eager step is bound by the host;
- peak allocated memory of each training variant.
Variants are timed interleaved, round-robin in blocks of ``--steps`` batches (after ``--warmup`` untimed ones), so
clock and thermal drift hit all alike; images/s is that of the median block. ``--compile`` adds
``torch.compile``d model-only variants and reports their compile time.

The paper-protocol trial time is implied, not run: CIFAR-10's 45,000 training images (after the 10 % val split) x
30 epochs at density 1, then 20 recovery epochs at each density of the paper's schedule (linear, 5 % of the channels
per step: 0.95, 0.90, ..., 0.05), plus a val and test pass (15,000 images) after the first phase and after each step
at ``EVAL_SPEEDUP`` x the training rate. Each step trains a smaller network, so ``cifar32`` also times SPLoRA model
only at ``--densities`` (physically pruned by ``spa.pruning.prune_to_density`` on the weight criterion's scores,
eager and graphed), interpolates seconds per image linearly in density between them, and scales each rate by the
unpruned end-to-end / model-only ratio of the same path: ``paper_trial_minutes``. ``paper_trial_minutes_unpruned``
is the old figure, every phase at the unpruned end-to-end rate (an upper bound on the training part).

Last line: ``end_to_end_over_model_only=.. splora_over_finetune=.. paper_trial_minutes=..
paper_trial_minutes_unpruned=..`` (SPLoRA, ``cifar32``, GPU-resident, CUDA graphs; SPLoRA over fine-tuning end to
end); each setting prints the same figures for the eager and the graphed path before it (``r50_224`` only the
unpruned trial time: the paper's CIFAR runs are at 32 px). Without CUDA it prints one line to stderr and exits 2;
so does a non-CUDA ``--device``, and ``--densities`` without 0.05 (before anything else).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from spa.adapters import add_splora, mark_trainable
from spa.config import PruneConfig
from spa.counting import conv_channels
from spa.criteria import score_channels
from spa.gpu_data import CROP_PADDING, Augmentation, DeviceLoader, DeviceSet
from spa.graphs import CapturedStep
from spa.models import build_resnet
from spa.pruning import prune_to_density
from spa.schedules import density_schedule
from spa.splits import IMAGENET_MEAN, IMAGENET_STD, DatasetInfo
from spa.training import autocast

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the helpers shared by the scripts beside this one
from _timing import last_line  # noqa: E402

CIFAR10_TRAIN_IMAGES = 45_000  # 50,000 less the 10 % val split
CIFAR10_EVAL_IMAGES = 15_000  # val 5,000 + test 10,000, evaluated after every step
PAPER_EPOCHS, PAPER_STEPS, PAPER_RECOVERY_EPOCHS = 30, 19, 20
PAPER_FINAL_DENSITY = 0.05  # the original code removes 5 % of the channels per step, 19 steps to 5 % (docs/METHOD.md)
DENSITIES = "0.75,0.5,0.25,0.05"  # pruned networks timed by default; seconds per image interpolated between them
EVAL_SPEEDUP = 3.0  # an inference image costs about a third of a training image (forward only)
CLASSES = 10


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet50", help="architecture (default: resnet50)")
    parser.add_argument("--batch-32", type=int, default=128, help="batch size at 32 px (default: 128)")
    parser.add_argument("--batch-224", type=int, default=64, help="batch size at 224 px (default: 64)")
    parser.add_argument("--settings", default="cifar32,r50_224", help="settings to run (default: cifar32,r50_224)")
    parser.add_argument("--rank", type=int, default=8, help="SPLoRA rank (default: 8)")
    parser.add_argument("--images", type=int, default=10_000, help="synthetic training images (default: 10000)")
    parser.add_argument("--workers", type=int, default=4, help="DataLoader workers of the PIL path (default: 4)")
    parser.add_argument("--steps", type=int, default=15, help="batches per timed block (default: 15)")
    parser.add_argument("--rounds", type=int, default=3, help="timed blocks per variant (default: 3)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed batches per variant first (default: 5)")
    parser.add_argument(
        "--densities",
        default=DENSITIES,
        help=f"densities at which cifar32 times pruned SPLoRA networks; they must include {PAPER_FINAL_DENSITY} "
        f"(default: {DENSITIES})",
    )
    parser.add_argument("--compile", action="store_true", help="add torch.compile'd model-only variants (default: off)")
    parser.add_argument("--device", default="cuda", help="CUDA device (default: cuda)")
    return parser


# --- pure helpers ------------------------------------------------------------------------------------------------


def throughput(images: int, seconds: Sequence[float]) -> float:
    """Images per second of the median block, each block processing ``images`` images."""
    return images / statistics.median(seconds)


def paper_schedule() -> list[float]:
    """The densities the paper's recovery phases train at: 0.95, 0.90, ..., 0.05 (``spa.schedules``, linear)."""
    return density_schedule(PAPER_FINAL_DENSITY, PAPER_STEPS, "linear")


def parse_densities(text: str) -> list[float]:
    """``--densities``: numbers in [0.05, 1), one of them 0.05, so that the measured densities with the unpruned
    network's 1 span the schedule. Raises ``ValueError`` naming the bad value and what is allowed."""
    allowed = f"comma-separated numbers in [{PAPER_FINAL_DENSITY}, 1), including {PAPER_FINAL_DENSITY}"
    try:
        values = sorted({float(item) for item in text.split(",") if item.strip()}, reverse=True)
    except ValueError:
        raise ValueError(f"--densities {text!r}: allowed: {allowed}") from None
    if PAPER_FINAL_DENSITY not in values or not all(PAPER_FINAL_DENSITY <= d < 1 for d in values):
        raise ValueError(f"--densities {text!r}: allowed: {allowed}")
    return values


def seconds_per_image(density: float, rates: dict[float, float]) -> float:
    """``1 / images/s`` at ``density``, linear in density between the nearest measured densities in ``rates``
    (density -> images/s); ``density`` must lie within them."""
    known = sorted(rates)
    if not known[0] <= density <= known[-1]:
        raise ValueError(f"density {density} is outside the measured densities {known}")
    return float(np.interp(density, known, [1 / rates[d] for d in known]))


def paper_trial_minutes_pruned(rates: dict[float, float]) -> float:
    """Minutes of a paper-protocol CIFAR-10 trial whose phases train at their density's rate (``rates``: density ->
    training images/s, spanning 0.05 to 1): 30 epochs at 1, then 20 at each density of ``paper_schedule``; an eval
    pass after each phase at ``EVAL_SPEEDUP`` x that phase's rate."""
    phases = [(1.0, PAPER_EPOCHS)] + [(density, PAPER_RECOVERY_EPOCHS) for density in paper_schedule()]
    seconds = sum(
        (CIFAR10_TRAIN_IMAGES * epochs + CIFAR10_EVAL_IMAGES / EVAL_SPEEDUP) * seconds_per_image(density, rates)
        for density, epochs in phases
    )
    return seconds / 60


def paper_trial_minutes(train_images_per_second: float) -> float:
    """Minutes of a paper-protocol CIFAR-10 trial with every phase at one training rate (the unpruned network's)."""
    return paper_trial_minutes_pruned({PAPER_FINAL_DENSITY: train_images_per_second, 1.0: train_images_per_second})


# --- data --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    name: str
    size: int
    cifar_stem: bool
    batch_size: int


def synthetic_cifar(count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10-shaped data as torchvision holds it: images (N, 32, 32, 3) uint8, labels (N,) int64."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8), rng.integers(0, CLASSES, count)


class _PILSet(Dataset):
    """Per-image PIL transforms, as a torchvision CIFAR10 wrapped by ``spa.data`` runs them."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Callable) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(Image.fromarray(self.images[index])), int(self.labels[index])


def _forever(make: Callable[[], Iterator]) -> Iterator:
    while True:
        yield from make()


def pil_batches(
    images: np.ndarray, labels: np.ndarray, setting: Setting, workers: int, device: torch.device
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    resize = [T.Resize(setting.size)] if setting.size != 32 else []
    transform = T.Compose(
        [
            T.RandomCrop(32, padding=CROP_PADDING),
            T.RandomHorizontalFlip(),
            *resize,
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    loader = DataLoader(
        _PILSet(images, labels, transform),
        batch_size=setting.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
    )
    for x, y in _forever(lambda: iter(loader)):
        x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        yield x, y.to(device, non_blocking=True)


def device_batches(
    images: np.ndarray, labels: np.ndarray, setting: Setting, device: torch.device
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    data = DeviceSet(
        torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(device), torch.from_numpy(labels).to(device)
    )
    info = DatasetInfo("cifar10", CLASSES, (3, 32, 32), cifar_stem=True)
    loader = DeviceLoader(
        data, batch_size=setting.batch_size, info=info, shuffle=True, augmentation=Augmentation(CROP_PADDING, True)
    )
    for x, y in _forever(lambda: iter(loader)):
        if setting.size != 32:
            x = F.interpolate(x, size=(setting.size, setting.size), mode="bilinear", align_corners=False)
            x = x.contiguous(memory_format=torch.channels_last)
        yield x, y


# --- the timed calls ---------------------------------------------------------------------------------------------


def build_model(arch: str, setting: Setting, learner: str, rank: int, device: torch.device) -> nn.Module:
    model = build_resnet(arch, CLASSES, cifar_stem=setting.cifar_stem)
    if learner == "splora":
        add_splora(model, rank, 1e-4)
    else:
        mark_trainable(model, "finetune")
    return model.to(device, memory_format=torch.channels_last).train()


def pruned_splora(arch: str, setting: Setting, rank: int, density: float, device: torch.device) -> nn.Module:
    """A SPLoRA network physically pruned to ``density`` of its conv channels in one step, as a trial's pruning step
    leaves it: ``spa.pruning.prune_to_density`` on the weight criterion's scores, the trial default floor of
    channels per conv."""
    model = build_resnet(arch, CLASSES, cifar_stem=setting.cifar_stem)
    add_splora(model, rank, 1e-4)
    reference = conv_channels(model)
    example = torch.zeros(1, 3, setting.size, setting.size)
    scores = score_channels(model, [], "weight")  # the weight criterion reads no data
    prune_to_density(model, scores, density, reference, example, min_channels=PruneConfig().min_channels)
    return model.to(device, memory_format=torch.channels_last).train()


def training_block(
    model: nn.Module,
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
    steps: int,
    device: torch.device,
    captured: CapturedStep | None = None,
) -> Callable[[], None]:
    """``steps`` training steps on ``batches``; the loss is summed on the device (no host sync per step). With
    ``captured`` (a ``spa.graphs.CapturedStep`` of ``model``), as a trial with ``cuda_graphs`` runs them: forward,
    loss and backward replayed as one CUDA graph, the optimizer step eager."""
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    total = torch.zeros((), device=device)

    def block() -> None:
        nonlocal total
        for _ in range(steps):
            x, y = next(batches)
            if captured is not None:
                loss = captured(x, y)
            else:
                optimizer.zero_grad(set_to_none=True)
                with autocast(device, bf16=True):
                    loss = loss_fn(model(x), y)
                loss.backward()
            optimizer.step()
            total = total + loss.detach().float()

    return block


def loader_block(batches: Iterator[tuple[torch.Tensor, torch.Tensor]], steps: int) -> Callable[[], None]:
    def block() -> None:
        for _ in range(steps):
            next(batches)

    return block


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_blocks(
    blocks: dict[str, Callable[[], None]], rounds: int, warmup: Callable[[str], None], device: torch.device
) -> tuple[dict[str, list[float]], dict[str, int]]:
    """Seconds per block of each variant (round-robin) and its peak allocated bytes (0 off CUDA)."""
    for name in blocks:
        warmup(name)
    _synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in blocks}
    peak = dict.fromkeys(blocks, 0)
    for _ in range(rounds):
        for name, block in blocks.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            _synchronize(device)
            started = time.perf_counter()
            block()
            _synchronize(device)
            times[name].append(time.perf_counter() - started)
            if device.type == "cuda":
                peak[name] = max(peak[name], torch.cuda.max_memory_allocated(device))
    return times, peak


def measure_setting(
    setting: Setting,
    *,
    arch: str,
    rank: int,
    images: int,
    workers: int,
    steps: int,
    rounds: int,
    warmup: int,
    compile_models: bool,
    device: torch.device,
    densities: Sequence[float] = (),
    log: Callable[[str], None] = print,
) -> dict[str, float]:
    """Images/s of every variant of one setting (names as printed), and ``peak_GiB:<variant>`` entries. With
    ``densities``: SPLoRA model only at each, pruned (``model_only_splora@0.5``, and ``..._graphed@0.5`` on CUDA)."""
    torch.manual_seed(0)
    data, labels = synthetic_cifar(images)
    batch = setting.batch_size
    feeds = {
        "loader_pil_w0": pil_batches(data, labels, setting, 0, device),
        f"loader_pil_w{workers}": pil_batches(data, labels, setting, workers, device),
        "loader_gpu_resident": device_batches(data, labels, setting, device),
    }
    blocks: dict[str, Callable[[], None]] = {name: loader_block(feed, steps) for name, feed in feeds.items()}
    fixed = next(device_batches(data, labels, setting, device))  # model only: one batch, already on the device

    def repeat(batch_on_device: tuple[torch.Tensor, torch.Tensor]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            yield batch_on_device

    compile_seconds: dict[str, float] = {}
    for learner in ("finetune", "splora"):
        model = build_model(arch, setting, learner, rank, device)
        blocks[f"model_only_{learner}"] = training_block(model, repeat(fixed), steps, device)
        blocks[f"end_to_end_gpu_resident_{learner}"] = training_block(
            model, device_batches(data, labels, setting, device), steps, device
        )
        blocks[f"end_to_end_pil_w{workers}_{learner}"] = training_block(
            model, pil_batches(data, labels, setting, workers, device), steps, device
        )
        if device.type == "cuda":  # a model of its own, captured once: the graph owns its gradients
            graphed = build_model(arch, setting, learner, rank, device)
            captured = CapturedStep(graphed, nn.CrossEntropyLoss(), bf16=True)
            blocks[f"model_only_{learner}_graphed"] = training_block(graphed, repeat(fixed), steps, device, captured)
            blocks[f"end_to_end_gpu_resident_{learner}_graphed"] = training_block(
                graphed, device_batches(data, labels, setting, device), steps, device, captured
            )
        if compile_models:
            compiled = torch.compile(build_model(arch, setting, learner, rank, device))
            started = time.perf_counter()
            training_block(compiled, repeat(fixed), 1, device)()  # compiles forward and backward
            _synchronize(device)
            compile_seconds[learner] = time.perf_counter() - started
            log(f"{setting.name}: torch.compile of {learner} took {compile_seconds[learner]:.1f} s")
            blocks[f"model_only_{learner}_compiled"] = training_block(compiled, repeat(fixed), steps, device)

    for density in densities:
        pruned = pruned_splora(arch, setting, rank, density, torch.device("cpu"))
        log(f"{setting.name}: SPLoRA pruned to {density:g}: {conv_channels(pruned)} conv channels")
        graphed = copy.deepcopy(pruned).to(device) if device.type == "cuda" else None
        pruned = pruned.to(device)
        blocks[f"model_only_splora@{density:g}"] = training_block(pruned, repeat(fixed), steps, device)
        if graphed is not None:
            captured = CapturedStep(graphed, nn.CrossEntropyLoss(), bf16=True)
            blocks[f"model_only_splora_graphed@{density:g}"] = training_block(
                graphed, repeat(fixed), steps, device, captured
            )

    def warm(name: str) -> None:
        started = time.perf_counter()
        for _ in range(max(1, -(-warmup // steps))):
            blocks[name]()
        _synchronize(device)
        log(f"{setting.name}: warm-up {name} {time.perf_counter() - started:.1f} s")

    times, peak = time_blocks(blocks, rounds, warm, device)
    rates: dict[str, float] = {}
    for name, values in times.items():
        rates[name] = throughput(batch * steps, values)
        memory = f", peak {peak[name] / 2**30:.2f} GiB" if peak[name] else ""
        log(
            f"{setting.name}: {name:>32} {rates[name]:9.1f} images/s (max/min block {max(values) / min(values):.2f})"
            f"{memory}"
        )
    rates.update({f"peak_GiB:{name}": peak[name] / 2**30 for name in times})
    rates.update({f"compile_s:{learner}": seconds for learner, seconds in compile_seconds.items()})
    return rates


def pruned_rates(rates: dict[str, float], path: str = "") -> dict[float, float]:
    """Density -> end-to-end SPLoRA images/s: the unpruned end-to-end rate at 1, and at each pruned density its
    model-only rate x the unpruned end-to-end / model-only ratio (the data path costs the same per image)."""
    model_only = rates[f"model_only_splora{path}"]
    scale = rates[f"end_to_end_gpu_resident_splora{path}"] / model_only
    prefix = f"model_only_splora{path}@"
    pruned = {float(name[len(prefix) :]): rate * scale for name, rate in rates.items() if name.startswith(prefix)}
    return {1.0: model_only * scale, **pruned}


def summary(rates: dict[str, float], path: str = "") -> dict[str, float]:
    """The last line's figures from one setting's rates; ``path="_graphed"`` for the CUDA-graph variants.
    ``paper_trial_minutes`` (pruned networks' rates) only where pruned densities were timed."""
    splora = rates[f"end_to_end_gpu_resident_splora{path}"]
    figures = {
        "end_to_end_over_model_only": splora / rates[f"model_only_splora{path}"],
        "splora_over_finetune": splora / rates[f"end_to_end_gpu_resident_finetune{path}"],
    }
    by_density = pruned_rates(rates, path)
    if len(by_density) > 1:
        figures["paper_trial_minutes"] = paper_trial_minutes_pruned(by_density)
    figures["paper_trial_minutes_unpruned"] = paper_trial_minutes(splora)
    return figures


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        densities = parse_densities(args.densities)
    except ValueError as error:
        print(error, file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("gpu.py needs a CUDA GPU, and torch.cuda.is_available() is False on this machine", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    if device.type != "cuda":
        print(f"gpu.py measures a CUDA device; --device {args.device} is not one (use cuda or cuda:N)", file=sys.stderr)
        return 2
    torch.backends.cudnn.benchmark = True
    settings = {
        "cifar32": Setting("cifar32", 32, True, args.batch_32),
        "r50_224": Setting("r50_224", 224, False, args.batch_224),
    }
    chosen = [name.strip() for name in args.settings.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in settings]
    if unknown or "cifar32" not in chosen:
        print(f"--settings {args.settings!r}: allowed cifar32 (required), r50_224", file=sys.stderr)
        return 2
    print(f"card: {torch.cuda.get_device_name(device)}; torch {torch.__version__}", flush=True)
    results: dict[str, dict[str, float]] = {}
    for name in chosen:
        setting = settings[name]
        print(
            f"{name}: {args.arch} at {setting.size} px, batch {setting.batch_size}, bf16, channels-last, SPLoRA "
            f"rank {args.rank}; {args.rounds} blocks of {args.steps} batches per variant, round-robin",
            flush=True,
        )
        results[name] = measure_setting(
            setting,
            arch=args.arch,
            rank=args.rank,
            images=args.images,
            workers=args.workers,
            steps=args.steps,
            rounds=args.rounds,
            warmup=args.warmup,
            compile_models=args.compile,
            device=device,
            densities=densities if name == "cifar32" else (),
            log=lambda message: print(message, flush=True),
        )
        print(f"{name} eager: " + last_line(summary(results[name])), flush=True)
        print(f"{name} CUDA graphs: " + last_line(summary(results[name], "_graphed")), flush=True)
    print(last_line(summary(results["cifar32"], "_graphed")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
