"""The GPU subset: the fused conv, the device-resident data path and the sync-free epoch on a CUDA device.

Skipped without CUDA; ``benchmarks/gpu_check.sh`` runs this file with the CPU tests of the same modules.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from spa import fused, training
from spa.adapters import SPLoRAConv2d, add_splora
from spa.data import _INFOS
from spa.gpu_data import Augmentation, DeviceLoader, DeviceSet
from spa.models import build_resnet
from spa.training import _reseed

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CUDA = torch.device("cuda")


@pytest.mark.parametrize("stride", [1, 2])
def test_fused_conv_matches_two_conv_path_in_fp32_and_under_bf16_autocast(stride: int) -> None:
    torch.manual_seed(0)
    layer = SPLoRAConv2d(nn.Conv2d(32, 64, 3, stride=stride, padding=1), 8, 0.1).to(CUDA)
    x = torch.randn(8, 32, 16, 16, device=CUDA).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    factors = (layer.lora_a.weight, layer.lora_b.weight)
    for bf16, tolerance in ((False, 1e-3), (True, 5e-2)):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            expected = layer.base_layer(x) + layer.lora_b(layer.lora_a(x))
            actual = fused.centre_tap_conv2d(x, layer.base_layer, *factors)
        grad_output = torch.randn_like(expected)
        expected_grads = torch.autograd.grad(expected, (x, *factors), grad_output)
        actual_grads = torch.autograd.grad(actual, (x, *factors), grad_output)
        assert actual.dtype == expected.dtype
        torch.testing.assert_close(actual, expected, rtol=tolerance, atol=tolerance)
        for a, e in zip(actual_grads, expected_grads, strict=True):
            assert a.dtype == e.dtype
            scale = e.abs().max().item()
            assert (a - e).abs().max().item() <= tolerance * max(scale, 1.0)


def test_splora_resnet_trains_with_bf16_and_channels_last() -> None:
    torch.manual_seed(0)
    model = add_splora(build_resnet("resnet50", 10, cifar_stem=True), 8, 1e-3).to(
        CUDA, memory_format=torch.channels_last
    )
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    batches = [(torch.randn(16, 3, 32, 32, device=CUDA), torch.randint(0, 10, (16,), device=CUDA)) for _ in range(3)]
    loss = training.train_one_epoch(model, batches, optimizer, CUDA, seed=0, bf16=True, check_every=2)
    assert loss == loss and loss > 0
    assert all(m.base_layer.weight.grad is None for m in model.modules() if isinstance(m, SPLoRAConv2d))


def test_device_loader_on_cuda_is_seeded_and_covers_the_crop_support() -> None:
    data = DeviceSet(
        torch.randint(0, 256, (50, 3, 32, 32), dtype=torch.uint8, device=CUDA), torch.arange(50, device=CUDA)
    )
    loader = DeviceLoader(
        data, batch_size=16, info=_INFOS["cifar10"], shuffle=True, augmentation=Augmentation(4, True), seed=0
    )
    _reseed(loader, 7)
    first = [(x.clone(), y.clone()) for x, y in loader]
    _reseed(loader, 7)
    second = list(loader)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, second, strict=True))
    assert first[0][0].device.type == "cuda" and first[0][0].is_contiguous(memory_format=torch.channels_last)
    from spa.gpu_data import draw_augmentation

    dy, dx, flips = draw_augmentation(20_000, Augmentation(4, True), torch.Generator(CUDA).manual_seed(0), CUDA)
    assert set(dy.tolist()) == set(range(9)) == set(dx.tolist()) and 0.45 < flips.float().mean().item() < 0.55
