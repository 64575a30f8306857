"""Counting against the paper's published definitions and hand-computed small cases."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from spa.adapters import add_splora, merge
from spa.counting import conv_channels, flops, learned_parameters, projected_learned_parameters, total_parameters
from spa.models import build_resnet
from spa.pruning import network_conv_names, prune_to_density


def test_resnet50_cifar_matches_paper() -> None:
    model = build_resnet("resnet50", 10, cifar_stem=True)
    assert learned_parameters(model) == 23_520_842
    assert abs(flops(model, (3, 32, 32)) / 1e6 - 1304.7) / 1304.7 < 1e-3
    add_splora(model, rank=8, init_range=1e-4)
    assert learned_parameters(model) == 466_338
    assert total_parameters(model) == 23_520_842  # adapters count as merged into their conv
    assert abs(flops(model, (3, 32, 32)) / 1e6 - 1304.7) / 1304.7 < 1e-3


def test_flops_hand_computed_and_input_size_matters() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, bias=False),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 2),
    )
    # conv: 8*8 positions * 4 out * 3 in * 9 taps; BN: 2 * 4*8*8; linear: 2*4.
    assert flops(model, (3, 8, 8)) == 64 * 4 * 27 + 2 * 256 + 8
    assert flops(model, (3, 16, 16)) == 256 * 4 * 27 + 2 * 1024 + 8


def test_splora_learned_parameters_by_hand() -> None:
    model = build_resnet("resnet18", 7)
    add_splora(model, rank=3, init_range=1e-3)
    convs = [m.base_layer for m in model.modules() if hasattr(m, "lora_a")]
    adapters = sum(3 * (c.in_channels + c.out_channels) for c in convs)
    bn = sum(m.weight.numel() + m.bias.numel() for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    head = 512 * 7 + 7
    assert learned_parameters(model) == adapters + bn + head


def test_conv_channels_resnet18() -> None:
    # stem 64; layer1 4x64; layer2 4x128 + 128 downsample; layer3 4x256 + 256; layer4 4x512 + 512.
    expected = 64 + 4 * 64 + 5 * 128 + 5 * 256 + 5 * 512
    model = build_resnet("resnet18", 5)
    assert conv_channels(model) == expected
    assert conv_channels(add_splora(model, 2, 1e-3)) == expected


def test_merge_keeps_counts_and_flops() -> None:
    model = add_splora(build_resnet("resnet18", 5), 4, 1e-3)
    before = flops(model, (3, 64, 64)), total_parameters(model)
    merge(model)
    assert (flops(model, (3, 64, 64)), sum(p.numel() for p in model.parameters())) == before


@pytest.mark.parametrize("arch", ["resnet18", "resnet34"])
def test_finetune_learns_everything(arch: str) -> None:
    model = build_resnet(arch, 3)
    assert learned_parameters(model) == sum(p.numel() for p in model.parameters())
    assert torch.is_grad_enabled()


@pytest.mark.parametrize("learner, expected", [("splora", 1000 * 0.25), ("finetune", 1000 * 0.25**2)])
def test_projected_learned_parameters_scale_by_learner(learner: str, expected: float) -> None:
    assert projected_learned_parameters(1000, learner=learner, density=0.8, final_density=0.2) == pytest.approx(
        expected
    )
    assert projected_learned_parameters(1000, learner=learner, density=0.2, final_density=0.2) == 1000  # at its end


@pytest.mark.parametrize("learner, tolerance", [("splora", 0.05), ("finetune", 0.15)])
def test_projected_learned_parameters_against_a_pruned_network(learner: str, tolerance: float) -> None:
    """The projection from the unpruned network against the count after real pruning (random scores) to 30 %."""
    torch.manual_seed(0)
    model = build_resnet("resnet18", 5)
    if learner == "splora":
        add_splora(model, 4, 1e-3)
    reference = conv_channels(model)
    projected = projected_learned_parameters(learned_parameters(model), learner=learner, density=1, final_density=0.3)
    scores = {name: torch.rand(conv.out_channels) for name, conv in network_conv_names(model).items()}
    prune_to_density(model, scores, 0.3, reference, torch.zeros(1, 3, 32, 32), min_channels=1)
    assert abs(projected / learned_parameters(model) - 1) < tolerance


def test_projected_learned_parameters_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="learner='lora'"):
        projected_learned_parameters(1, learner="lora", density=1, final_density=0.5)
    with pytest.raises(ValueError, match="density=0"):
        projected_learned_parameters(1, learner="splora", density=0, final_density=0.5)
