"""The training engine every phase shares: seeding, devices, optimizer and LR schedule, one epoch, evaluation.

Nothing here knows about pruning: ``spa.experiment`` (train -> prune -> recover) and ``spa.pretrain`` (the
source-task backbone) both train with these functions.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from spa.adapters import adapter_layers
from spa.config import LR_SCHEDULES, OPTIMIZERS, ConfigError
from spa.validation import is_int

if TYPE_CHECKING:
    from spa.graphs import CapturedStep

__all__ = [
    "CHECK_EVERY",
    "NonFiniteLossError",
    "seed_everything",
    "phase_seed",
    "resolve_device",
    "build_optimizer",
    "build_scheduler",
    "autocast",
    "compile_for_training",
    "train_one_epoch",
    "recompute_batchnorm_statistics",
    "evaluate",
]


class NonFiniteLossError(FloatingPointError):
    """Training diverged: the loss became NaN or infinite. Raised instead of reporting garbage."""


CHECK_EVERY = 50  # batches between divergence checks on CUDA: one host sync per 50 steps costs nothing measurable


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def phase_seed(seed: int, step: int, epoch: int) -> int:
    """The seed of one training epoch: a distinct, reproducible stream per (run seed, pruning step, epoch).

    Re-deriving it at every epoch (instead of letting one stream run on) is what makes a run resumed from a
    checkpoint end with exactly the numbers of an uninterrupted one.
    """
    return (seed * 1_000_003 + step * 10_007 + epoch) % 2**63


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; a named CUDA device must exist on this machine."""
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
        count = torch.cuda.device_count()
        if index >= count:
            raise ConfigError(
                f"device={name!r} does not exist; this machine has {count} GPU(s)",
                field="device",
                allowed=f"auto, cpu, cuda, cuda:0 .. cuda:{count - 1}",
            )
    return torch.device(name)


def build_optimizer(
    model: nn.Module,
    name: str,
    *,
    lr: float,
    momentum: float,
    weight_decay: float,
    adapter_lr_ratio: float = 1.0,
) -> torch.optim.Optimizer:
    """An optimizer over the parameters that require a gradient (``name``: one of ``spa.config.OPTIMIZERS``).

    With SGD, SPLoRA's adapter factors form a group of their own at ``lr * adapter_lr_ratio`` (``OptimConfig``
    says why); AdamW scales every parameter's step by its own gradient's size, so it needs no ratio and ignores it.
    """
    learned = [p for p in model.parameters() if p.requires_grad]
    if name == "sgd":
        factors = {id(p) for _, layer in adapter_layers(model) for p in (layer.lora_a.weight, layer.lora_b.weight)}
        groups = [{"params": [p for p in learned if id(p) not in factors], "lr": lr}]
        adapted = [p for p in learned if id(p) in factors]
        if adapted:
            groups.append({"params": adapted, "lr": lr * adapter_lr_ratio})
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(learned, lr=lr, weight_decay=weight_decay)
    raise ConfigError.not_allowed("optimizer", name, ", ".join(OPTIMIZERS))


def build_scheduler(
    optimizer: torch.optim.Optimizer, name: str, epochs: int, *, steps_per_epoch: int = 1
) -> torch.optim.lr_scheduler.LRScheduler:
    """An LR schedule over ``epochs`` (``name``: one of ``spa.config.LR_SCHEDULES``), to be stepped
    ``steps_per_epoch`` times an epoch (1: per epoch; the batches per epoch: per batch).

    ``step`` changes the rate at the same epoch boundaries either way. ``cosine`` stepped per batch anneals within
    each epoch too: stepped per epoch, a one-epoch phase (the default recovery after a pruning step) would run at
    the full rate to its end and leave the weights, and the BatchNorm running statistics that trail them, moving.
    """
    if name == "step":  # as the original research code: StepLR(step=max(1, epochs // 4), gamma=0.2)
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(1, epochs // 4) * steps_per_epoch, gamma=0.2)
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, epochs * steps_per_epoch))
    if name == "constant":
        return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    raise ConfigError.not_allowed("lr_schedule", name, ", ".join(LR_SCHEDULES))


def autocast(device: torch.device, bf16: bool) -> AbstractContextManager[Any]:
    """bf16 autocast on CUDA when asked for; full precision otherwise (CPU bf16 is slower than fp32 here)."""
    if bf16 and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def compile_for_training(model: nn.Module, backend: str) -> nn.Module:
    """``torch.compile(model)`` with an empty compile cache, for one training phase.

    Compiled code is cached per forward method and guarded on the shapes it saw; the network loses channels at every
    pruning step, so each phase would recompile anyway, and past ``torch._dynamo.config.recompile_limit`` (8)
    recompilations torch silently falls back to eager. Emptying the cache first makes every phase one clean compile.
    The wrapper shares ``model``'s parameters: the optimizer, evaluation, scoring (LRP) and checkpoints use ``model``.
    """
    torch.compiler.reset()
    return torch.compile(model, backend=backend)


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
    check_every: int | None = None,
    on_first_step: Callable[[float], None] | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    captured: CapturedStep | None = None,
) -> float:
    """One pass over ``loader``; returns the mean training loss. Raises ``NonFiniteLossError`` on divergence.

    ``scheduler``, if given, is stepped after every batch (a schedule built with ``steps_per_epoch=len(loader)``).

    The loss is summed on the device and read by the host every ``check_every`` batches and at the end of the
    epoch, always before returning. Each read is a host-device sync: on a GPU it waits for the whole step, so the
    host cannot queue the next one. ``None`` (the default) reads every batch on the CPU, where a read costs nothing,
    and every ``CHECK_EVERY`` batches on CUDA. A sum over batches is non-finite as soon as one loss was (NaN and
    infinity propagate through addition), so divergence is still caught: at most ``check_every - 1`` further steps
    run on a diverged model, and the epoch raises before the experiment evaluates or checkpoints that step. A read
    comes before its batch's optimizer step, so with ``check_every=1`` a diverged batch never updates the model.

    ``on_first_step(seconds)`` is called with the wall time of the first batch's step (the device synchronised):
    for a compiled model, the compile time plus one step; with ``captured``, the capture plus one step.

    ``captured`` (a ``spa.graphs.CapturedStep`` of ``model``, made for the phase): forward, loss and backward
    replay as one CUDA graph; its ``bf16`` is the one that counts.
    """
    if check_every is None:
        check_every = CHECK_EVERY if device.type == "cuda" else 1
    if not (is_int(check_every) and check_every >= 1):
        raise ConfigError.not_allowed("check_every", check_every, "an integer >= 1")
    _reseed(loader, seed)
    model.train()
    loss_fn = nn.CrossEntropyLoss()
    total = torch.zeros((), dtype=torch.float64, device=device)  # sum of loss * batch size, on the device
    count, checked, batch_index = 0, 0, -1
    started = 0.0
    for batch_index, (images, labels) in enumerate(loader):
        images, labels = _to_device(images, labels, device)
        if batch_index == 0:
            started = time.perf_counter()
        if captured is not None:  # forward and backward at once: the gradients are ready before the check
            loss = captured(images, labels)
        else:
            with autocast(device, bf16):
                loss = loss_fn(model(images), labels)
        total += loss.detach().double() * labels.shape[0]  # no .item(): stays queued on the device
        count += labels.shape[0]
        if (batch_index + 1) % check_every == 0:
            _check_finite(total, checked, batch_index)
            checked = batch_index + 1
        if captured is None:
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
        optimizer.step()
        if batch_index == 0 and on_first_step is not None:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            on_first_step(time.perf_counter() - started)
        if scheduler is not None:
            scheduler.step()
    if checked <= batch_index:
        _check_finite(total, checked, batch_index)
    return total.item() / max(count, 1)


def _check_finite(total: torch.Tensor, first: int, last: int) -> None:
    """Raise ``NonFiniteLossError`` when the loss sum (through batch ``last``) is not finite: one host sync."""
    value = total.item()
    if not math.isfinite(value):
        batches = f"at batch {last}" if first == last else f"between batches {first} and {last}"
        raise NonFiniteLossError(f"training loss became {value} {batches}; lower the learning rate")


def recompute_batchnorm_statistics(
    model: nn.Module, loader: Iterable[tuple[torch.Tensor, torch.Tensor]], device: torch.device
) -> None:
    """Replace every BatchNorm layer's running statistics by their average over one pass of ``loader``.

    The running statistics training leaves are a moving average over its last batches, taken while the weights
    still moved: after the short recovery phases of a pruning run they lag the weights (on the digits task, SPLoRA
    at 30% density lost 4 points of test accuracy to that on average; issue 10). One forward pass with the final
    weights fixes it ("precise BN", Wu & Johnson 2021, arXiv:2105.07576). Only BatchNorm runs in training mode.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    model.eval()
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average: every batch weighs the same
        norm.train()
    with torch.no_grad():
        for images, labels in loader:
            model(_to_device(images, labels, device)[0])
    for norm, momentum in zip(norms, momenta, strict=True):
        norm.momentum = momentum
    model.eval()


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
