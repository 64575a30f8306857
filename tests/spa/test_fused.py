"""The fused centre-tap SPLoRA conv against the two-conv path it replaces: same outputs and gradients."""

from __future__ import annotations

from copy import deepcopy

import pytest
import torch
from torch import nn

from spa import fused
from spa.adapters import SPLoRAConv2d, add_splora
from spa.counting import conv_channels
from spa.models import build_resnet
from spa.pruning import network_conv_names, prune_to_density


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


@pytest.mark.parametrize(
    ("stride", "channels_last", "batch", "width", "chunked"),
    [
        (1, False, 4, 9, False),
        (2, False, 4, 9, False),
        (2, True, 4, 9, False),
        (1, False, 4, 13, True),
        (2, True, 4, 25, True),
        (1, False, 5, 12, True),
    ],
)
def test_low_rank_factor_gradients_equal_those_from_the_centre_tap_gradient(
    stride: int, channels_last: bool, batch: int, width: int, chunked: bool
) -> None:
    """The CPU's rank-space dA, dB (``low_rank_gradients``) against B^T dW_c and dW_c A^T with dW_c from the conv
    library (the CUDA branch's route), and against an einsum over the sampled pixels. From 128 sampled pixels per
    sample, on one thread, the products run a sample at a time (``chunked``): here with one thread throughout."""
    torch.manual_seed(2)
    rank, inputs, outputs = 3, 5, 7
    x = torch.randn(batch, inputs, width, width, dtype=torch.double)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    size = (width - 1) // stride + 1
    assert (size * size >= fused.CHUNK_PIXELS) == chunked
    grad_output = torch.randn(batch, outputs, size, size, dtype=torch.double)
    lora_a = torch.randn(rank, inputs, 1, 1, dtype=torch.double)
    lora_b = torch.randn(outputs, rank, 1, 1, dtype=torch.double)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        grad_a, grad_b = fused.low_rank_gradients(grad_output, x, lora_a, lora_b, (stride, stride))
    finally:
        torch.set_num_threads(threads)
    centre = fused.centre_tap_gradient(grad_output, x, (stride, stride))
    by_hand = torch.einsum("nohw,nihw->oi", grad_output, x[:, :, ::stride, ::stride])
    torch.testing.assert_close(centre, by_hand)
    a, b = lora_a.flatten(1), lora_b.flatten(1)
    assert grad_a.shape == lora_a.shape and grad_b.shape == lora_b.shape
    torch.testing.assert_close(grad_a.flatten(1), b.t() @ by_hand)
    torch.testing.assert_close(grad_b.flatten(1), by_hand @ a.t())


@pytest.mark.parametrize("threads", [1, 2])
def test_compiled_fused_conv_is_one_graph_with_the_eager_gradients(threads: int) -> None:
    """``torch.compile(fullgraph=True)`` traces the fused conv's forward and backward without a graph break (asking
    for the thread count in the backward broke the graph once per conv, and a compiled CPU step ran 1.6x eager),
    at the 144 sampled pixels where one thread would take the per-sample path eagerly; outputs and gradients match
    the eager two-conv path. aot_eager traces what inductor would, without generating code."""
    torch.manual_seed(3)
    layer = SPLoRAConv2d(nn.Conv2d(4, 6, 3, padding=1), 2, 0.5)
    x = torch.randn(2, 4, 12, 12)
    grad_output = torch.randn(2, 6, 12, 12)
    expected = _two_conv_result(layer, x, grad_output)
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.compiler.reset()
        x_grad = x.detach().requires_grad_(True)
        out = compiled(x_grad)
        grads = torch.autograd.grad(out, (x_grad, layer.lora_a.weight, layer.lora_b.weight), grad_output)
    finally:
        torch.set_num_threads(previous)
        torch.compiler.reset()
    _assert_same([out.detach(), *grads], expected)


def _two_conv_result(layer: SPLoRAConv2d, x: torch.Tensor, grad_output: torch.Tensor) -> list[torch.Tensor]:
    with fused.enabled(False):
        return _result(layer, x, grad_output)


def _result(layer: SPLoRAConv2d, x: torch.Tensor, grad_output: torch.Tensor) -> list[torch.Tensor]:
    """The output and the gradients of x, A and B from one forward and backward."""
    x = x.detach().requires_grad_(True)
    out = layer(x)
    return [out.detach(), *torch.autograd.grad(out, (x, layer.lora_a.weight, layer.lora_b.weight), grad_output)]


def _assert_same(actual: list[torch.Tensor], expected: list[torch.Tensor]) -> None:
    for name, a, e in zip(("out", "dx", "dA", "dB"), actual, expected, strict=True):
        assert a.dtype == e.dtype, name
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}")


def _new_state(layer: SPLoRAConv2d) -> None:
    state = layer.state_dict()
    state["base_layer.weight"] = torch.randn_like(state["base_layer.weight"])
    layer.load_state_dict(state)


def _scale_in_place(layer: SPLoRAConv2d) -> None:
    with torch.no_grad():
        layer.base_layer.weight.mul_(-2.0)


def _new_parameter(layer: SPLoRAConv2d) -> None:
    weight = layer.base_layer.weight
    layer.base_layer.weight = nn.Parameter(torch.randn_like(weight), requires_grad=False)


def _assign_data(layer: SPLoRAConv2d) -> None:
    layer.base_layer.weight.data = torch.randn_like(layer.base_layer.weight)


@pytest.mark.parametrize(
    "change",
    [_new_state, _scale_in_place, _new_parameter, _assign_data, lambda layer: layer.double()],
    ids=["load_state_dict", "in-place under no_grad", "new parameter", "data assigned", "to float64"],
)
def test_the_kept_kernel_follows_a_changed_frozen_weight(change) -> None:
    """A step builds the layer's kept kernel; after the frozen weight changes, the next step must use the new one."""
    torch.manual_seed(3)
    layer = SPLoRAConv2d(nn.Conv2d(5, 7, 3, padding=1, bias=True), 3, 0.5)
    x = torch.randn(2, 5, 9, 9)
    grad_output = torch.randn(2, 7, 9, 9)
    _result(layer, x, grad_output)  # builds and keeps W + B @ A
    change(layer)
    dtype = layer.base_layer.weight.dtype
    x, grad_output = x.to(dtype), grad_output.to(dtype)
    _assert_same(_result(layer, x, grad_output), _two_conv_result(layer, x, grad_output))


def test_a_backward_after_another_forward_uses_its_own_factors() -> None:
    """Two forwards with different factors, then both backwards (the first twice, with a retained graph): each
    gets the gradients of the factors it ran with, though the second forward rewrote the kept centre tap."""
    torch.manual_seed(4)
    layer = SPLoRAConv2d(nn.Conv2d(4, 6, 3, stride=2, padding=1), 2, 0.5)
    x1, x2 = torch.randn(2, 4, 8, 8, requires_grad=True), torch.randn(2, 4, 8, 8, requires_grad=True)
    g1, g2 = torch.randn(2, 6, 4, 4), torch.randn(2, 6, 4, 4)
    first_factors = (layer.lora_a.weight, layer.lora_b.weight)
    expected1 = _two_conv_result(layer, x1, g1)
    out1 = layer(x1)
    layer.lora_a.weight = nn.Parameter(torch.randn_like(layer.lora_a.weight))
    layer.lora_b.weight = nn.Parameter(torch.randn_like(layer.lora_b.weight))
    expected2 = _two_conv_result(layer, x2, g2)
    out2 = layer(x2)
    assert not torch.allclose(expected1[1], expected2[1])
    for _ in range(2):
        _assert_same(
            [out1.detach(), *torch.autograd.grad(out1, (x1, *first_factors), g1, retain_graph=True)], expected1
        )
    grads2 = torch.autograd.grad(out2, (x2, layer.lora_a.weight, layer.lora_b.weight), g2)
    _assert_same([out2.detach(), *grads2], expected2)


def test_merge_and_copies_use_the_current_factors_not_the_kept_kernel() -> None:
    """After optimizer steps on the fused path, ``merged()`` and a deep copy compute the layer's current function;
    the copy builds its own kernel, so stepping the copy leaves the original's result alone."""
    torch.manual_seed(5)
    layer = SPLoRAConv2d(nn.Conv2d(4, 6, 3, padding=1), 3, 0.5)
    optimizer = torch.optim.SGD([layer.lora_a.weight, layer.lora_b.weight], lr=0.5)
    x, grad_output = torch.randn(2, 4, 7, 7), torch.randn(2, 6, 7, 7)
    for _ in range(2):
        layer(x).backward(grad_output)
        optimizer.step()
        optimizer.zero_grad()
    expected = _two_conv_result(layer, x, grad_output)
    torch.testing.assert_close(layer.merged()(x), expected[0], rtol=1e-5, atol=1e-5)
    copy = deepcopy(layer)
    _assert_same(_result(copy, x, grad_output), expected)
    with torch.no_grad():
        copy.lora_b.weight.mul_(3.0)
    _assert_same(_result(layer, x, grad_output), expected)
    assert not torch.allclose(_result(copy, x, grad_output)[0], expected[0])


def test_a_pruned_resnet_steps_the_same_fused_or_not() -> None:
    """A fused step keeps every layer's kernel; torch-pruning then replaces the frozen weights with smaller ones."""
    torch.manual_seed(6)
    model = add_splora(build_resnet("resnet18", 5, cifar_stem=True), rank=4, init_range=0.1)
    model.train()
    x = torch.randn(2, 3, 16, 16)
    model(x).logsumexp(1).sum().backward()
    scores = {name: torch.rand(conv.out_channels) for name, conv in network_conv_names(model).items()}
    prune_to_density(model, scores, 0.5, conv_channels(model), x[:1], min_channels=1)
    model.zero_grad(set_to_none=True)
    with fused.enabled(False):
        expected = model(x)
        expected.logsumexp(1).sum().backward()
    expected_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    actual = model(x)
    actual.logsumexp(1).sum().backward()
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)
    for name, grad in expected_grads.items():
        torch.testing.assert_close(model.get_parameter(name).grad, grad, rtol=1e-3, atol=1e-5, msg=name)
