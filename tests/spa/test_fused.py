"""The fused centre-tap SPLoRA conv against the two-conv path it replaces: same outputs and gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from spa import fused
from spa.adapters import SPLoRAConv2d, add_splora
from spa.models import build_resnet


def _two_conv(layer: SPLoRAConv2d, x: torch.Tensor) -> torch.Tensor:
    return layer.base_layer(x) + layer.lora_b(layer.lora_a(x))


@pytest.mark.parametrize(
    ("kernel", "stride", "bias", "rank", "channels_last"),
    [
        (3, 1, False, 3, False),
        (3, 2, False, 8, False),
        (3, 1, True, 1, True),
        (3, 2, True, 4, True),
        (1, 2, False, 2, False),
        (1, 1, True, 5, False),
        (5, 1, True, 2, False),
        (7, 2, False, 4, True),
    ],
)
def test_outputs_and_gradients_match_the_two_conv_path(
    kernel: int, stride: int, bias: bool, rank: int, channels_last: bool
) -> None:
    torch.manual_seed(0)
    layer = SPLoRAConv2d(nn.Conv2d(6, 10, kernel, stride=stride, padding=kernel // 2, bias=bias), rank, 0.5)
    x = torch.randn(3, 6, 13, 11)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    factors = (layer.lora_a.weight, layer.lora_b.weight)
    expected = _two_conv(layer, x)
    grad_output = torch.randn_like(expected)
    expected_grads = torch.autograd.grad(expected, (x, *factors), grad_output)

    actual = fused.centre_tap_conv2d(x, layer.base_layer, *factors)
    actual_grads = torch.autograd.grad(actual, (x, *factors), grad_output)

    assert actual.shape == expected.shape
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
    for name, a, e in zip(("dx", "dA", "dB"), actual_grads, expected_grads, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}")


def test_gradcheck_in_double_precision() -> None:
    torch.manual_seed(1)
    layer = SPLoRAConv2d(nn.Conv2d(3, 4, 3, stride=2, padding=1, bias=True), 2, 0.5).double()
    x = torch.randn(2, 3, 7, 7, dtype=torch.double, requires_grad=True)
    a = layer.lora_a.weight.detach().clone().requires_grad_(True)
    b = layer.lora_b.weight.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x, a, b: fused.centre_tap_conv2d(x, layer.base_layer, a, b), (x, a, b))


def test_frozen_base_gets_no_gradient_and_forward_switches_by_mode() -> None:
    torch.manual_seed(0)
    layer = SPLoRAConv2d(nn.Conv2d(4, 6, 3, padding=1), 2, 0.5)
    assert fused.applies(layer)  # training, frozen base
    layer(torch.randn(2, 4, 8, 8, requires_grad=True)).sum().backward()
    assert layer.base_layer.weight.grad is None and layer.base_layer.bias.grad is None
    assert layer.lora_a.weight.grad is not None and layer.lora_b.weight.grad is not None
    layer.eval()
    assert not fused.applies(layer)
    layer.train()
    layer.base_layer.weight.requires_grad_(True)  # as spa.pruning's dependency tracing does
    assert not fused.applies(layer)
    layer.base_layer.weight.requires_grad_(False)
    with fused.enabled(False):
        assert not fused.applies(layer)
    assert fused.applies(layer)


def test_a_resnet_step_is_the_same_fused_or_not() -> None:
    torch.manual_seed(0)
    model = add_splora(build_resnet("resnet18", 5, cifar_stem=True), rank=4, init_range=0.1)
    model.train()
    x = torch.randn(2, 3, 16, 16)
    with fused.enabled(False):
        expected = model(x)
        expected.logsumexp(1).sum().backward()
    expected_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    actual = model(x)  # BatchNorm's running stats move again: outputs use batch stats, so they still match
    actual.logsumexp(1).sum().backward()
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)
    for name, grad in expected_grads.items():
        torch.testing.assert_close(model.get_parameter(name).grad, grad, rtol=1e-3, atol=1e-5, msg=name)


@pytest.mark.parametrize(("stride", "channels_last"), [(1, False), (2, False), (2, True)])
def test_low_rank_factor_gradients_equal_those_from_the_centre_tap_gradient(stride: int, channels_last: bool) -> None:
    """The CPU's rank-space dA, dB (``low_rank_gradients``) against B^T dW_c and dW_c A^T with dW_c from the conv
    library (the CUDA branch's route), and against an einsum over the sampled pixels."""
    torch.manual_seed(2)
    rank, inputs, outputs = 3, 5, 7
    x = torch.randn(4, inputs, 9, 9, dtype=torch.double)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    size = (9 - 1) // stride + 1
    grad_output = torch.randn(4, outputs, size, size, dtype=torch.double)
    lora_a = torch.randn(rank, inputs, 1, 1, dtype=torch.double)
    lora_b = torch.randn(outputs, rank, 1, 1, dtype=torch.double)
    grad_a, grad_b = fused.low_rank_gradients(grad_output, x, lora_a, lora_b, (stride, stride))
    centre = fused.centre_tap_gradient(grad_output, x, (stride, stride))
    by_hand = torch.einsum("nohw,nihw->oi", grad_output, x[:, :, ::stride, ::stride])
    torch.testing.assert_close(centre, by_hand)
    a, b = lora_a.flatten(1), lora_b.flatten(1)
    assert grad_a.shape == lora_a.shape and grad_b.shape == lora_b.shape
    torch.testing.assert_close(grad_a.flatten(1), b.t() @ by_hand)
    torch.testing.assert_close(grad_b.flatten(1), by_hand @ a.t())
