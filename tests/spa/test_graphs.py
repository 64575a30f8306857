"""A training phase replayed as a CUDA graph computes what the eager loop computes (CUDA only; skipped elsewhere).

``benchmarks/gpu_check.sh`` runs this file on a GPU machine; on a CPU the config refusals are in test_cuda_only.py.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from spa import training
from spa.adapters import add_splora, mark_trainable
from spa.graphs import CapturedStep
from spa.models import build_resnet

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CUDA = torch.device("cuda")


def _batches(sizes: list[int], seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(n, 3, 32, 32, generator=generator), torch.randint(0, 10, (n,), generator=generator)) for n in sizes
    ]


def _model(learner: str) -> nn.Module:
    torch.manual_seed(0)
    model = build_resnet("resnet18", 10, cifar_stem=True)
    if learner == "splora":
        add_splora(model, 4, 1e-2)
    else:
        mark_trainable(model, "finetune")
    return model.to(CUDA, memory_format=torch.channels_last)


@pytest.mark.parametrize(("learner", "bf16"), [("splora", False), ("finetune", False), ("splora", True)])
def test_every_replay_computes_the_eager_gradients_and_statistics_of_the_current_weights(
    learner: str, bf16: bool
) -> None:
    """Step by step, not along a trajectory: on random data 1e-6 of gradient noise (what nondeterministic GPU kernels
    give) grows to 0.2-0.3 % of the loss within two epochs (measured on a CPU), so trajectories cannot be compared.
    Each step compares one eager and one graphed pass from the same weights, then copies the eager model's updated
    state into the graphed one in place, which the graph must see."""
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False  # fp32 is fp32: TF32 rounds
    eager_model = _model(learner)
    graphed_model = copy.deepcopy(eager_model)
    optimizer = torch.optim.SGD([p for p in eager_model.parameters() if p.requires_grad], lr=0.05, momentum=0.9)
    captured = CapturedStep(graphed_model, nn.CrossEntropyLoss(), bf16=bf16)
    tolerance = 3e-2 if bf16 else 1e-4
    learned = {name for name, p in graphed_model.named_parameters() if p.requires_grad}
    buffers = {name for name, _ in graphed_model.named_buffers()}
    # The partial batch runs eagerly into the graph's gradients; the batch after it replays again.
    for step, (images, labels) in enumerate(_batches([16, 16, 8, 16])):
        images = images.to(CUDA).contiguous(memory_format=torch.channels_last)
        labels = labels.to(CUDA)
        optimizer.zero_grad(set_to_none=True)
        with training.autocast(CUDA, bf16):
            expected = nn.functional.cross_entropy(eager_model(images), labels)
        expected.backward()
        replay = captured.fits(images, labels)
        assert replay == (step != 2)
        actual = captured(images, labels)
        torch.testing.assert_close(actual.float(), expected.detach().float(), rtol=tolerance, atol=tolerance)
        graphed = dict(graphed_model.named_parameters())
        for name, parameter in eager_model.named_parameters():
            if parameter.grad is not None:
                scale = max(parameter.grad.abs().max().item(), 1e-3)
                error = (graphed[name].grad - parameter.grad).abs().max().item()
                assert error <= tolerance * scale, (step, name, error, scale)
        graphed_state = graphed_model.state_dict()
        for name, value in eager_model.state_dict().items():  # BatchNorm: the warm-ups must not have counted
            if value.is_floating_point():
                torch.testing.assert_close(graphed_state[name], value, rtol=tolerance, atol=tolerance, msg=name)
            else:
                assert torch.equal(graphed_state[name], value), name
        optimizer.step()
        graph = captured.graph
        with torch.no_grad():  # the learned weights and the statistics, in place: the graph reads the same tensors
            for name, value in eager_model.state_dict().items():
                if name in learned or name in buffers:
                    graphed_state[name].copy_(value)
        assert captured.graph is graph  # frozen weights untouched: no new capture
    assert captured.graph is not None and captured.images.shape[0] == 16


def test_a_write_to_a_frozen_weight_captures_afresh_and_the_replay_sees_it() -> None:
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    model = _model("splora")
    captured = CapturedStep(model, nn.CrossEntropyLoss(), bf16=False)
    images, labels = (t.to(CUDA) for t in _batches([8])[0])
    captured(images, labels)
    first = captured.graph
    frozen = next(p for p in model.parameters() if not p.requires_grad and p.dim() == 4)
    with torch.no_grad():
        frozen.mul_(0.5)  # as a checkpoint load would: in place, the version counter moves
    actual = captured(images, labels).clone()
    assert captured.graph is not first
    reference = copy.deepcopy(model)  # a copy builds its own kernels from the halved weight
    expected = nn.functional.cross_entropy(reference(images), labels)
    torch.testing.assert_close(actual, expected.detach(), rtol=1e-4, atol=1e-4)


def test_train_one_epoch_replays_the_captured_step() -> None:
    model = _model("splora")
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    captured = CapturedStep(model, nn.CrossEntropyLoss(), bf16=False)
    before = [p.detach().clone() for p in model.parameters() if p.requires_grad]
    loss = training.train_one_epoch(model, _batches([8, 8, 8]), optimizer, CUDA, seed=0, captured=captured)
    assert captured.graph is not None and 0 < loss < 10
    after = [p for p in model.parameters() if p.requires_grad]
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))  # the optimizer stepped


def test_a_non_finite_loss_still_stops_a_captured_phase_before_its_optimizer_step() -> None:
    batches = _batches([8, 8, 8])
    batches[1][0][0, 0, 0, 0] = float("nan")
    model = _model("splora")
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
    captured = CapturedStep(model, nn.CrossEntropyLoss(), bf16=False)
    with pytest.raises(training.NonFiniteLossError, match="at batch 1"):
        training.train_one_epoch(model, batches, optimizer, CUDA, seed=0, check_every=1, captured=captured)
    assert all(torch.isfinite(p).all() for p in model.parameters())
