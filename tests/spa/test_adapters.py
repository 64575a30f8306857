"""SPLoRA adapters against the independent `sp_adapters` package, plus trainability and merge."""

from __future__ import annotations

import pytest
import torch
from sp_adapters import SPLoRAConv2d as RefConv2d
from sp_adapters import SPLoRALinear as RefLinear
from torch import nn

from spa.adapters import SPLoRAConv2d, SPLoRALinear, adapter_layers, add_splora, merge
from spa.models import build_resnet


def _copy_into_reference_conv(ours: SPLoRAConv2d, ref: RefConv2d) -> None:
    with torch.no_grad():
        ref.weight.copy_(ours.base_layer.weight)
        if ref.bias is not None:
            ref.bias.copy_(ours.base_layer.bias)
        ref.adapter.rows.copy_(ours.lora_a.weight.flatten(1).unsqueeze(0))  # (1, r, in)
        ref.adapter.cols.copy_(ours.lora_b.weight.flatten(1).unsqueeze(0))  # (1, out, r)


@pytest.mark.parametrize(
    ("kernel", "stride", "bias"),
    [(3, 1, False), (3, 2, False), (1, 2, False), (7, 2, False), (3, 1, True), (5, 1, True)],
)
def test_conv_matches_reference_package(kernel: int, stride: int, bias: bool) -> None:
    torch.manual_seed(0)
    base = nn.Conv2d(6, 10, kernel, stride=stride, padding=kernel // 2, bias=bias)
    ours = SPLoRAConv2d(base, rank=3, init_range=0.5)
    ref = RefConv2d(6, 10, kernel, stride=stride, padding=kernel // 2, bias=bias, rank=3, init_range=0.5)
    _copy_into_reference_conv(ours, ref)
    x = torch.randn(2, 6, 13, 13)
    expected = ref(x)
    actual = ours(x)
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.adapted_weight(), ref.adapted_weight, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("bias", [True, False])
def test_linear_matches_reference_package(bias: bool) -> None:
    torch.manual_seed(1)
    base = nn.Linear(12, 7, bias=bias)
    ours = SPLoRALinear(base, rank=4, init_range=0.3)
    ref = RefLinear(12, 7, bias=bias, rank=4, init_range=0.3)
    with torch.no_grad():
        ref.weight.copy_(base.weight)
        if bias:
            ref.bias.copy_(base.bias)
        ref.adapter.rows.copy_(ours.lora_a.weight.unsqueeze(0))
        ref.adapter.cols.copy_(ours.lora_b.weight.unsqueeze(0))
    x = torch.randn(5, 12)
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)
    ref.eval()  # the reference's eval path uses the materialised weight
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)


def test_initialisation_ranges() -> None:
    torch.manual_seed(0)
    layer = SPLoRAConv2d(nn.Conv2d(64, 128, 3, padding=1, bias=False), rank=16, init_range=1e-3)
    b = layer.lora_b.weight
    assert b.shape == (128, 16, 1, 1) and layer.lora_a.weight.shape == (16, 64, 1, 1)
    assert b.abs().max().item() <= 1e-3 and b.abs().max().item() > 0.9e-3
    # kaiming_uniform(a=sqrt(5)) on fan_in=64 bounds A at 1/sqrt(64).
    assert layer.lora_a.weight.abs().max().item() <= 1 / 8 + 1e-7


def test_gradients_reach_only_learned_parameters() -> None:
    torch.manual_seed(0)
    model = add_splora(build_resnet("resnet18", 5), rank=2, init_range=0.1)
    model.train()
    loss = model(torch.randn(4, 3, 32, 32)).logsumexp(1).mean()
    loss.backward()
    for name, parameter in model.named_parameters():
        learned = ".lora_" in name or ".bn" in name or "downsample.1" in name or name.startswith(("fc.", "bn1."))
        assert parameter.requires_grad == learned, name
        if learned:
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
        else:
            assert parameter.grad is None, name


def test_every_conv_adapted_and_head_left_plain() -> None:
    model = add_splora(build_resnet("resnet18", 5), rank=2, init_range=0.1)
    names = [n for n, _ in adapter_layers(model)]
    assert len(names) == 20  # stem + 16 block convs + 3 downsample convs
    assert isinstance(model.fc, nn.Linear)
    assert not any(
        isinstance(m, nn.Conv2d) and ".base_layer" not in n and ".lora_" not in n for n, m in model.named_modules()
    )


def test_target_selects_layers_and_empty_target_raises() -> None:
    model = add_splora(
        build_resnet("resnet18", 5),
        rank=2,
        init_range=0.1,
        target=lambda name, m: name.startswith("layer4") and isinstance(m, nn.Conv2d),
    )
    assert [n for n, _ in adapter_layers(model)] == [
        "layer4.0.conv1",
        "layer4.0.conv2",
        "layer4.0.downsample.0",
        "layer4.1.conv1",
        "layer4.1.conv2",
    ]
    with pytest.raises(ValueError, match="matched no layer"):
        add_splora(build_resnet("resnet18", 5), 2, 0.1, target=lambda name, m: False)


def test_merge_keeps_logits() -> None:
    torch.manual_seed(0)
    model = add_splora(build_resnet("resnet50", 10, cifar_stem=True), rank=8, init_range=0.05).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
        merge(model)
        after = model(x)
    assert not list(adapter_layers(model))
    assert (after - before).abs().max() / before.abs().max() < 1e-5


@pytest.mark.parametrize(("rank", "init_range"), [(0, 1e-3), (-2, 1e-3), (2.5, 1e-3), (4, 0.0), (4, float("nan"))])
def test_impossible_rank_or_range(rank: object, init_range: float) -> None:
    with pytest.raises(ValueError, match="rank|init_range") as info:
        add_splora(build_resnet("resnet18", 5), rank, init_range)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)


def test_unsupported_conv_is_refused() -> None:
    with pytest.raises(ValueError, match="groups=2"):
        SPLoRAConv2d(nn.Conv2d(4, 4, 3, padding=1, groups=2), rank=2, init_range=0.1)
