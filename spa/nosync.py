"""A training epoch without a host-device sync per step: ``train_one_epoch`` with the loss kept on the device.

``spa.experiment.train_one_epoch`` reads ``loss.item()`` after every batch to stop on a NaN before stepping; on a
GPU that read waits for the whole step, so the host cannot queue the next one. Here the per-batch losses are summed
on the device and read every ``check_every`` batches and at the end of the epoch. A sum over batches is non-finite
as soon as one loss was (NaN and infinity propagate through addition), so divergence is still caught: at most
``check_every - 1`` further steps run on a diverged model, and the epoch raises before it returns, hence before
the experiment evaluates or writes a checkpoint of that step. Same signature and return value as the eager
version plus ``check_every``; the mean loss it returns equals the eager one up to float summation order.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from spa.experiment import NonFiniteLossError, _autocast, _reseed, _to_device

__all__ = ["CHECK_EVERY", "train_one_epoch"]

CHECK_EVERY = 50  # batches between divergence checks: one sync per 50 steps costs nothing measurable


def train_one_epoch(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    *,
    seed: int,
    bf16: bool = False,
    check_every: int = CHECK_EVERY,
) -> float:
    """One pass over ``loader``; returns the mean training loss. Raises ``NonFiniteLossError`` on divergence,
    checked every ``check_every`` batches and at the end, always before returning."""
    if isinstance(check_every, bool) or not isinstance(check_every, int) or check_every < 1:
        raise ValueError(f"check_every={check_every!r} is not allowed; allowed: an integer >= 1")
    _reseed(loader, seed)
    model.train()
    loss_fn = nn.CrossEntropyLoss()
    total = torch.zeros((), dtype=torch.float64, device=device)  # sum of loss * batch size, on the device
    count, checked = 0, 0
    batch_index = -1
    for batch_index, (images, labels) in enumerate(loader):
        images, labels = _to_device(images, labels, device)
        with _autocast(device, bf16):
            loss = loss_fn(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.detach().double() * labels.shape[0]  # no .item(): stays queued on the device
        count += labels.shape[0]
        if (batch_index + 1) % check_every == 0:
            _check(total, checked, batch_index)
            checked = batch_index + 1
    _check(total, checked, batch_index)
    return total.item() / max(count, 1)


def _check(total: torch.Tensor, first: int, last: int) -> None:
    value = total.item()  # the one sync
    if value != value or value in (float("inf"), float("-inf")):
        raise NonFiniteLossError(
            f"training loss became {value} between batches {first} and {last}; lower the learning rate"
        )
