"""The epoch that reads the loss every N batches (CUDA's default): the per-batch epoch's mean loss and state, and
divergence still stops it before the epoch returns."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from spa import training


def _setup(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 3))
    batches = [(torch.randn(5, 3, 2, 2), torch.randint(0, 3, (5,))) for _ in range(7)]
    return model, batches


def test_same_mean_loss_and_parameters_as_the_eager_epoch() -> None:
    model, batches = _setup()
    other = copy.deepcopy(model)
    eager = training.train_one_epoch(
        model, batches, torch.optim.SGD(model.parameters(), lr=0.1), torch.device("cpu"), seed=3, check_every=1
    )
    deferred = training.train_one_epoch(
        other, batches, torch.optim.SGD(other.parameters(), lr=0.1), torch.device("cpu"), seed=3, check_every=3
    )
    assert deferred == pytest.approx(eager, rel=1e-6)
    for a, b in zip(model.parameters(), other.parameters(), strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize(("bad_batch", "check_every"), [(0, 50), (4, 2), (6, 3)])
def test_a_nan_stops_the_epoch_before_it_returns(bad_batch: int, check_every: int) -> None:
    model, batches = _setup()
    batches[bad_batch] = (torch.full_like(batches[bad_batch][0], float("nan")), batches[bad_batch][1])
    seen = []

    def loader():
        for index, batch in enumerate(batches):
            seen.append(index)
            yield batch

    with pytest.raises(training.NonFiniteLossError, match="loss became nan (at batch|between batches)"):
        training.train_one_epoch(
            model,
            loader(),
            torch.optim.SGD(model.parameters(), lr=0.1),
            torch.device("cpu"),
            seed=0,
            check_every=check_every,
        )
    # Stopped at the first check after the bad batch: at most check_every - 1 batches later.
    assert max(seen) < bad_batch + check_every


def test_check_every_must_be_a_positive_integer() -> None:
    model, batches = _setup()
    with pytest.raises(ValueError, match="check_every=0"):
        training.train_one_epoch(
            model, batches, torch.optim.SGD(model.parameters(), lr=0.1), torch.device("cpu"), seed=0, check_every=0
        )


def test_on_the_cpu_the_default_reads_every_batch_before_its_step() -> None:
    model, batches = _setup()
    before = copy.deepcopy(model.state_dict())
    batches[0] = (torch.full_like(batches[0][0], float("nan")), batches[0][1])
    with pytest.raises(training.NonFiniteLossError, match="loss became nan at batch 0"):
        training.train_one_epoch(
            model, batches, torch.optim.SGD(model.parameters(), lr=0.1), torch.device("cpu"), seed=0
        )
    for name, value in model.state_dict().items():  # the diverged batch never updated the model
        torch.testing.assert_close(value, before[name])
