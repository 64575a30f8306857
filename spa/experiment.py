"""One experiment, as every study trial runs it: transfer, then prune step by step with recovery training.

seed -> build -> train ``epochs`` -> report step 0 -> for each pruning step: score -> remove -> evaluate ->
recover ``recovery_epochs`` (fresh optimizer: the learning rate restarts, as in the reference) -> evaluate val
and test -> checkpoint -> report.

Every source of randomness is re-derived from (seed, step, epoch) at the start of each phase, so an experiment
resumed from the checkpoint of step k ends with exactly the metrics of an uninterrupted one.
"""

from __future__ import annotations

import math
import random
import tempfile
import time
from collections.abc import Callable, Iterable
from contextlib import ExitStack, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from spa import adapters, counting
from spa.checkpoint import load_checkpoint, resize_to, save_checkpoint
from spa.config import LR_SCHEDULES, OPTIMIZERS, ConfigError, ExperimentConfig
from spa.criteria import score_channels
from spa.data import load_splits, make_loaders, score_loader
from spa.metrics import EXTRA_METRIC_NAMES, METRIC_NAMES
from spa.models import build_resnet
from spa.pretrain import PretrainConfig, pretrained_backbone
from spa.pruning import prune_to_density
from spa.schedules import density_schedule, explicit_schedule

__all__ = [
    "NonFiniteLossError",
    "Report",
    "METRIC_NAMES",
    "EXTRA_METRIC_NAMES",
    "run_experiment",
    "pruning_densities",
    "resolve_device",
    "seed_everything",
    "train_one_epoch",
    "evaluate",
    "build_optimizer",
    "build_scheduler",
]


# report(metrics, checkpoint_dir): checkpoint_dir holds checkpoint.pt of this step, or is None.
Report = Callable[[dict[str, float], "str | None"], None]


class NonFiniteLossError(FloatingPointError):
    """Training diverged: the loss became NaN or infinite. Raised instead of reporting garbage."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _phase_seed(seed: int, step: int, epoch: int) -> int:
    # Distinct, reproducible stream per (run seed, pruning step, epoch).
    return (seed * 1_000_003 + step * 10_007 + epoch) % 2**63


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device={name!r} asked for a CUDA GPU but none is available; allowed here: auto, cpu",
                field="device",
                allowed="auto, cpu",
            )
        index = torch.device(name).index or 0
        if index >= torch.cuda.device_count():
            count = torch.cuda.device_count()
            raise ConfigError(
                f"device={name!r} does not exist; this machine has {count} GPU(s)",
                field="device",
                allowed=f"auto, cpu, cuda, cuda:0 .. cuda:{count - 1}",
            )
    return torch.device(name)


def build_optimizer(
    model: nn.Module, name: str, *, lr: float, momentum: float, weight_decay: float
) -> torch.optim.Optimizer:
    learned = [p for p in model.parameters() if p.requires_grad]
    if name == "sgd":
        return torch.optim.SGD(learned, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(learned, lr=lr, weight_decay=weight_decay)
    raise ConfigError.not_allowed("optimizer", name, ", ".join(OPTIMIZERS))


def build_scheduler(optimizer: torch.optim.Optimizer, name: str, epochs: int) -> torch.optim.lr_scheduler.LRScheduler:
    if name == "step":  # the reference: StepLR(step=max(1, epochs // 4), gamma=0.2)
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(1, epochs // 4), gamma=0.2)
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, epochs))
    if name == "constant":
        return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    raise ConfigError.not_allowed("lr_schedule", name, ", ".join(LR_SCHEDULES))


def _autocast(device: torch.device, bf16: bool):
    if bf16 and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def _to_device(images: torch.Tensor, labels: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    images = images.to(device, non_blocking=True)
    if device.type == "cuda":
        images = images.contiguous(memory_format=torch.channels_last)
    return images, labels.to(device, non_blocking=True)


def _reseed(loader: Iterable[Any], seed: int) -> None:
    """Fix the global stream (augmentation) and the loader's shuffling stream for one phase."""
    torch.manual_seed(seed)
    generator = getattr(loader, "generator", None)
    if generator is not None:
        generator.manual_seed(seed)


def train_one_epoch(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    *,
    seed: int,
    bf16: bool = False,
) -> float:
    """One pass over ``loader``; returns the mean training loss. Raises ``NonFiniteLossError`` on divergence."""
    _reseed(loader, seed)
    model.train()
    loss_fn = nn.CrossEntropyLoss()
    total, count = 0.0, 0
    for batch_index, (images, labels) in enumerate(loader):
        images, labels = _to_device(images, labels, device)
        with _autocast(device, bf16):
            loss = loss_fn(model(images), labels)
        value = loss.item()
        if not math.isfinite(value):
            raise NonFiniteLossError(f"training loss became {value} at batch {batch_index}; lower the learning rate")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += value * labels.numel()
        count += labels.numel()
    return total / max(count, 1)


def evaluate(model: nn.Module, loader: Iterable[tuple[torch.Tensor, torch.Tensor]], device: torch.device) -> float:
    """Top-1 accuracy over every sample of ``loader``."""
    model.eval()
    correct, count = 0, 0
    with torch.inference_mode():
        for images, labels in loader:
            images, labels = _to_device(images, labels, device)
            correct += (model(images).argmax(1) == labels).sum().item()
            count += labels.numel()
    return correct / max(count, 1)


def pruning_densities(config: ExperimentConfig) -> list[float]:
    prune = config.prune
    if prune.densities is not None:
        return explicit_schedule(prune.densities)
    return density_schedule(prune.final_density, prune.steps, prune.shape)


def _weights_path(config: ExperimentConfig) -> str:
    weights = config.model.weights
    if weights != "pretrained-digits":
        return weights
    pretrain = PretrainConfig(arch=config.model.arch)
    return str(pretrained_backbone(pretrain, config.runtime.cache_dir, threads=config.runtime.threads))


def _build_model(config: ExperimentConfig, num_classes: int, cifar_stem: bool) -> nn.Module:
    model = build_resnet(config.model.arch, num_classes, cifar_stem=cifar_stem, weights=_weights_path(config))
    learner = config.learner
    if learner.learner == "splora":
        adapters.add_splora(model, learner.rank, learner.init_range)
    else:
        adapters.mark_trainable(model, "finetune")
    return model


def run_experiment(
    config: ExperimentConfig,
    report: Report | None = None,
    *,
    resume_from: str | Path | None = None,
    checkpoint_root: str | Path | None = None,
    log: Callable[[str], None] | None = None,
) -> list[dict[str, float]]:
    """Run the experiment; returns one metrics row per reported step (step 0 = trained, unpruned).

    ``report(metrics, checkpoint_dir)`` is called after every step with a directory holding that step's
    checkpoint under ``checkpoint_root``. Without a ``checkpoint_root`` the checkpoints live in a temporary directory
    that is removed when the experiment ends: copy what you need during the callback (``tune.report`` does).
    ``resume_from`` is such a directory: the experiment continues with the next step and repeats no work.
    """
    log = log or (lambda message: None)
    runtime = config.runtime
    device = resolve_device(runtime.device)
    densities = pruning_densities(config)
    if runtime.threads is not None:
        torch.set_num_threads(runtime.threads)
    if runtime.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    seed_everything(runtime.seed)  # before anything random is created (the reference seeded after the model)

    data = config.data
    splits = load_splits(
        data.dataset, data_dir=data.data_dir, download=data.download, val_fraction=data.val_fraction, seed=runtime.seed
    )
    loaders = make_loaders(
        splits,
        batch_size=data.batch_size,
        num_workers=data.num_workers,
        seed=runtime.seed,
        pin_memory=device.type == "cuda",
    )
    # Channels are ranked on the training samples with eval transforms, in order: no augmentation noise.
    scoring_loader = score_loader(splits, batch_size=data.batch_size, num_workers=data.num_workers)
    info = splits.info
    example_input = torch.zeros(1, *info.input_size)

    start_step, history, state = 0, [], None
    if resume_from is not None:
        state = load_checkpoint(resume_from)
        start_step, history = int(state["step"]) + 1, list(state["history"])

    model = _build_model(config, info.num_classes, info.cifar_stem)
    reference_channels = counting.conv_channels(model)
    if state is not None:
        resize_to(model, state["model"])
        model.load_state_dict(state["model"])
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)

    with ExitStack() as cleanup:
        if checkpoint_root is None:
            root = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="spa-ckpt-")))
        else:
            root = Path(checkpoint_root)
        epochs_done = int(history[-1]["epoch"]) if history else 0

        def train_phase(step: int, epochs: int) -> float:
            nonlocal epochs_done
            optim = config.optim
            optimizer = build_optimizer(
                model, optim.optimizer, lr=optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay
            )
            scheduler = build_scheduler(optimizer, optim.lr_schedule, epochs)
            loss = float("nan")
            for epoch in range(epochs):
                started = time.perf_counter()
                loss = train_one_epoch(
                    model,
                    loaders.train,
                    optimizer,
                    device,
                    seed=_phase_seed(runtime.seed, step, epoch),
                    bf16=runtime.bf16,
                )
                scheduler.step()
                epochs_done += 1
                log(f"step {step} epoch {epoch + 1}/{epochs}: loss {loss:.4f} ({time.perf_counter() - started:.1f}s)")
            return loss

        def finish_step(step: int, density: float, loss: float, pruned_accuracy: float | None) -> dict[str, float]:
            val_accuracy = evaluate(model, loaders.val, device)
            counts = {
                "learned_params": counting.learned_parameters(model),
                "params": counting.total_parameters(model),
                "flops": counting.flops(model, info.input_size),
            }
            metrics = {
                "step": step,
                "density": counting.conv_channels(model) / reference_channels,
                "target_density": density,
                "val_accuracy": val_accuracy,
                "test_accuracy": evaluate(model, loaders.test, device),
                **counts,
                "epoch": epochs_done,
                "train_loss": loss,
                # Before recovery training; at step 0 nothing was pruned, so it is the trained accuracy itself.
                "val_accuracy_pruned": val_accuracy if pruned_accuracy is None else pruned_accuracy,
            }
            history.append(metrics)
            directory = root / f"step_{step:03d}"
            save_checkpoint(directory, model, {"step": step, "history": history, "config": config.to_flat()})
            log(
                f"step {step}: density {metrics['density']:.3f} val {metrics['val_accuracy']:.4f} "
                f"test {metrics['test_accuracy']:.4f} learned {metrics['learned_params']:,}"
            )
            if report is not None:
                report(dict(metrics), str(directory))
            return metrics

        if start_step == 0:
            loss = train_phase(0, config.optim.epochs)
            finish_step(0, 1.0, loss, None)
            start_step = 1

        for step in range(start_step, len(densities) + 1):
            density = densities[step - 1]
            scores = score_channels(
                model,
                scoring_loader,
                config.prune.criterion,
                norm=config.prune.norm,
                device=device,
                max_batches=config.prune.max_score_batches,
            )
            model.to("cpu")  # the dependency graph is traced on the CPU
            prune_to_density(model, scores, density, reference_channels, example_input)
            model.to(device)
            pruned_accuracy = evaluate(model, loaders.val, device)
            loss = train_phase(step, config.optim.recovery_epochs)
            finish_step(step, density, loss, pruned_accuracy)
        return history


def metrics_table(rows: list[dict[str, Any]], columns: Iterable[str] = METRIC_NAMES) -> str:
    """A fixed-width text table, one row per step."""
    columns = list(columns)
    cells = [[_format(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) if cells else len(c) for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)


def _format(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:.4f}" if abs(value) < 10 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return "" if value is None else str(value)
