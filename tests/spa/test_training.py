"""The training engine (spa.training): seeds, devices, optimizer and schedule builders, one epoch, evaluation."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from spa import adapters, experiment, training
from spa.training import (
    NonFiniteLossError,
    autocast,
    build_optimizer,
    build_scheduler,
    evaluate,
    phase_seed,
    resolve_device,
    train_one_epoch,
)
from spa.validation import ConfigError


@pytest.mark.parametrize(
    ("seed", "step", "epoch", "expected"),
    [(0, 0, 0, 0), (0, 0, 5, 5), (1, 2, 3, 1_000_003 + 20_014 + 3), (7, 0, 1, 7_000_022), (2**62, 0, 0, 2**62)],
)
def test_phase_seed(seed: int, step: int, epoch: int, expected: int) -> None:
    assert phase_seed(seed, step, epoch) == expected


def test_phase_seed_wraps_below_2_to_63() -> None:
    assert phase_seed(2**63, 0, 0) == (2**63 * 1_000_003) % 2**63 == 0
    assert 0 <= phase_seed(2**70 + 5, 9, 9) < 2**63


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_resolve_device_refuses_cuda_without_a_gpu() -> None:
    with pytest.raises(ConfigError) as caught:
        resolve_device("cuda:1")
    assert (caught.value.field, caught.value.allowed) == ("device", "auto, cpu")
    assert str(caught.value) == "device='cuda:1' asked for a CUDA GPU but none is available; allowed here: auto, cpu"


def two_layer_model() -> nn.Sequential:
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    model[0].requires_grad_(False)
    return model


def test_build_optimizer_learns_only_what_requires_grad() -> None:
    model = two_layer_model()
    sgd = build_optimizer(model, "sgd", lr=0.1, momentum=0.5, weight_decay=1e-3)
    assert isinstance(sgd, torch.optim.SGD)
    (group,) = sgd.param_groups
    assert [p.shape for p in group["params"]] == [torch.Size([2, 4]), torch.Size([2])]
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (0.1, 0.5, 1e-3)
    adamw = build_optimizer(model, "adamw", lr=0.01, momentum=0.9, weight_decay=0.0)
    assert isinstance(adamw, torch.optim.AdamW) and adamw.param_groups[0]["lr"] == 0.01
    with pytest.raises(ConfigError) as caught:
        build_optimizer(model, "adam", lr=0.1, momentum=0.0, weight_decay=0.0)
    assert (caught.value.field, caught.value.allowed) == ("optimizer", "sgd, adamw")


def test_sgd_gives_the_adapter_factors_their_own_learning_rate() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4))
    adapters.add_splora(model, rank=2, init_range=1e-3, head="none")
    conv = model[0]
    sgd = build_optimizer(model, "sgd", lr=0.01, momentum=0.9, weight_decay=0.0, adapter_lr_ratio=100.0)
    rest, factors = sgd.param_groups
    assert rest["lr"] == 0.01 and {id(p) for p in rest["params"]} == {id(p) for p in model[1].parameters()}
    assert factors["lr"] == pytest.approx(1.0)
    assert [id(p) for p in factors["params"]] == [id(conv.lora_a.weight), id(conv.lora_b.weight)]
    # AdamW sizes each step by the parameter's own gradient: one group, the ratio ignored.
    adamw = build_optimizer(model, "adamw", lr=0.01, momentum=0.9, weight_decay=0.0, adapter_lr_ratio=100.0)
    assert [group["lr"] for group in adamw.param_groups] == [0.01]
    # Fine-tuning has no factors: one group at lr.
    plain = build_optimizer(two_layer_model(), "sgd", lr=0.1, momentum=0.0, weight_decay=0.0, adapter_lr_ratio=100.0)
    assert [group["lr"] for group in plain.param_groups] == [0.1]


def test_recompute_batchnorm_statistics_averages_one_pass_with_the_final_weights() -> None:
    torch.manual_seed(0)
    norm = nn.BatchNorm2d(2, momentum=0.3)
    model = nn.Sequential(norm, nn.Dropout(0.5))
    norm.running_mean.fill_(5.0)  # stale statistics, as training leaves them
    batches = [torch.randn(4, 2, 3, 3) * 2 + 1 for _ in range(3)]  # equal batches: the cumulative mean is exact
    loader = [(x, torch.zeros(4, dtype=torch.int64)) for x in batches]
    training.recompute_batchnorm_statistics(model, loader, torch.device("cpu"))
    expected_mean = torch.stack([x.mean((0, 2, 3)) for x in batches]).mean(0)
    expected_var = torch.stack([x.var((0, 2, 3), unbiased=True) for x in batches]).mean(0)
    assert torch.allclose(norm.running_mean, expected_mean, atol=1e-6)
    assert torch.allclose(norm.running_var, expected_var, atol=1e-5)
    assert norm.momentum == 0.3 and not model.training and not norm.training


def learning_rates(name: str, epochs: int) -> list[float]:
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = build_scheduler(optimizer, name, epochs)
    rates = []
    for _ in range(epochs):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def test_build_scheduler() -> None:
    # step: x0.2 every max(1, epochs // 4) epochs.
    assert learning_rates("step", 8) == pytest.approx([1, 1, 0.2, 0.2, 0.04, 0.04, 0.008, 0.008])
    assert learning_rates("step", 2) == pytest.approx([1, 0.2])
    assert learning_rates("constant", 3) == [1.0, 1.0, 1.0]
    assert learning_rates("cosine", 2) == pytest.approx([1.0, 0.5])
    with pytest.raises(ConfigError) as caught:
        build_scheduler(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0), "linear", 3)
    assert (caught.value.field, caught.value.allowed) == ("lr_schedule", "step, cosine, constant")


def test_autocast_is_off_on_cpu_even_when_asked() -> None:
    with autocast(torch.device("cpu"), bf16=True):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def tiny_loader(seed: int = 0) -> DataLoader:
    inputs = torch.arange(24, dtype=torch.float32).reshape(8, 3) / 24
    labels = torch.tensor([0, 1, 0, 1, 1, 0, 1, 0])
    return DataLoader(
        TensorDataset(inputs, labels), batch_size=3, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )


def trained(seed: int) -> tuple[float, list[torch.Tensor]]:
    torch.manual_seed(0)
    model = two_layer_model()
    optimizer = build_optimizer(model, "sgd", lr=0.5, momentum=0.0, weight_decay=0.0)
    loss = train_one_epoch(model, tiny_loader(), optimizer, torch.device("cpu"), seed=seed)
    return loss, [p.detach().clone() for p in model.parameters()]


def test_train_one_epoch_is_reproducible_from_its_seed() -> None:
    loss_a, params_a = trained(seed=3)
    loss_b, params_b = trained(seed=3)
    loss_c, _ = trained(seed=4)  # another shuffling order
    assert loss_a == loss_b and all(torch.equal(a, b) for a, b in zip(params_a, params_b, strict=True))
    assert loss_a != loss_c


def test_train_one_epoch_returns_the_sample_weighted_mean_loss() -> None:
    model = nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # no update: every batch sees the same model
    inputs, labels = tiny_loader().dataset.tensors
    expected = nn.functional.cross_entropy(model(inputs), labels).item()
    loss = train_one_epoch(model, tiny_loader(), optimizer, torch.device("cpu"), seed=0)
    assert loss == pytest.approx(expected, rel=1e-6)
    assert model.training


def test_train_one_epoch_refuses_a_non_finite_loss() -> None:
    model = nn.Sequential(nn.Linear(3, 2))
    with torch.no_grad():
        model[0].weight.fill_(float("nan"))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(NonFiniteLossError, match="training loss became nan at batch 0; lower the learning rate"):
        train_one_epoch(model, tiny_loader(), optimizer, torch.device("cpu"), seed=0)


def test_evaluate_counts_every_sample() -> None:
    model = nn.Linear(3, 2)
    with torch.no_grad():  # logits (0.5, x0): class 1 iff x0 > 0.5
        model.weight.copy_(torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]))
        model.bias.copy_(torch.tensor([0.5, 0.0]))
    # x0 = 0, 3, 6, ..., 21 over 24: class 1 for samples 5, 6, 7 (x0 = 15/24, 18/24, 21/24).
    loader = DataLoader(tiny_loader().dataset, batch_size=3)  # in order; the last batch has 2 samples
    # labels [0, 1, 0, 1, 1, 0, 1, 0]; predictions [0, 0, 0, 0, 0, 1, 1, 1]: right at 0, 2, 6 -> 3 of 8.
    assert evaluate(model, loader, torch.device("cpu")) == 3 / 8
    assert not model.training


def test_experiment_reexports_the_engine() -> None:
    assert experiment.NonFiniteLossError is training.NonFiniteLossError
    assert experiment.train_one_epoch is training.train_one_epoch
    assert experiment.evaluate is training.evaluate


def test_pretrain_uses_the_engine_not_the_experiment() -> None:
    code = "import sys, spa.pretrain; print('spa.experiment' in sys.modules, 'spa.training' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False True"
