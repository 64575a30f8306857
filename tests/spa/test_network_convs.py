"""The one enumeration of the network's convs (spa.adapters.network_convs), shared by counting, scoring and
pruning; and the adapter layers' shared base."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from spa import counting, criteria, pruning
from spa.adapters import SPLoRAConv2d, SPLoRALinear, add_splora, network_convs, producing_conv
from spa.models import build_resnet

# torchvision's ResNet-18: the stem, two convs per basic block, and a 1x1 downsample in the first block of
# layers 2 to 4. Written out so that the enumeration is checked against the architecture, not against itself.
RESNET18_CONVS = [
    "conv1",
    *(f"layer1.{b}.conv{c}" for b in (0, 1) for c in (1, 2)),
    *(
        name
        for layer in (2, 3, 4)
        for name in (
            f"layer{layer}.0.conv1",
            f"layer{layer}.0.conv2",
            f"layer{layer}.0.downsample.0",
            f"layer{layer}.1.conv1",
            f"layer{layer}.1.conv2",
        )
    ),
]
# Output channels: 64 (stem) + 4 x 64 + 5 x 128 + 5 x 256 + 5 x 512.
RESNET18_CONV_CHANNELS = 64 + 4 * 64 + 5 * 128 + 5 * 256 + 5 * 512


@pytest.fixture(params=["plain", "splora"])
def model(request: pytest.FixtureRequest) -> nn.Module:
    torch.manual_seed(0)
    model = build_resnet("resnet18", 5)
    if request.param == "splora":
        add_splora(model, 2, 1e-3)
    return model


def test_network_convs_names_every_network_conv_once(model: nn.Module) -> None:
    convs = network_convs(model)
    assert list(convs) == RESNET18_CONVS
    adapted = isinstance(convs["conv1"], SPLoRAConv2d)
    assert all(isinstance(layer, SPLoRAConv2d if adapted else nn.Conv2d) for layer in convs.values())
    assert sum(producing_conv(layer).out_channels for layer in convs.values()) == RESNET18_CONV_CHANNELS == 4800


def test_counting_scoring_and_pruning_see_the_same_convs(model: nn.Module) -> None:
    convs = network_convs(model)
    producing = [producing_conv(layer) for layer in convs.values()]
    assert counting.network_convs(model) == producing
    assert counting.conv_channels(model) == RESNET18_CONV_CHANNELS
    assert list(pruning.network_conv_names(model).items()) == list(zip(RESNET18_CONVS, producing, strict=True))
    assert criteria.scored_convs(model) == convs


def test_producing_conv_of_an_adapter_is_its_frozen_base() -> None:
    base = nn.Conv2d(4, 6, 3, padding=1)
    adapter = SPLoRAConv2d(base, 2, 1e-3)
    assert producing_conv(adapter) is base and producing_conv(base) is base


def test_both_adapters_share_forward_adapted_weight_and_merge() -> None:
    for name in ("adapted_weight", "merged"):
        assert getattr(SPLoRAConv2d, name) is getattr(SPLoRALinear, name), name
    # The conv adapter's forward only adds the fused training path (spa.fused) in front of the shared one.
    assert SPLoRAConv2d.__mro__[1].forward is SPLoRALinear.forward
    torch.manual_seed(0)
    adapter = SPLoRAConv2d(nn.Conv2d(3, 4, 3, padding=1), 2, 0.5)
    x = torch.randn(2, 3, 5, 5)
    torch.testing.assert_close(adapter(x), SPLoRALinear.forward(adapter, x))


def test_linear_adapter_delta_weight_and_merge_values() -> None:
    torch.manual_seed(0)
    adapter = SPLoRALinear(nn.Linear(3, 2), 2, 0.5)
    b, a = adapter.lora_b.weight.detach(), adapter.lora_a.weight.detach()
    expected = torch.stack(
        [torch.stack([sum(b[i, k] * a[k, j] for k in range(2)) for j in range(3)]) for i in range(2)]
    )
    torch.testing.assert_close(adapter.get_delta_weight().detach(), expected)
    x = torch.randn(4, 3)
    merged = adapter.merged()
    assert type(merged) is nn.Linear
    torch.testing.assert_close(merged(x), adapter(x).detach())
    assert adapter.rank == 2
