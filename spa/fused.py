"""A SPLoRA conv as one convolution: ``conv(x, W + delta)`` with ``delta = B @ A`` at the kernel's centre tap.

The adapter's own path (``base(x) + lora_b(lora_a(x))``, see ``spa.adapters``) runs two extra 1x1 convolutions
forward, two more input gradients backward, and adds two full-size activations (the outputs, and the input
gradients). Folding the update into the kernel removes all of that: the forward is one convolution, and the
backward is the frozen network's input gradient plus the gradient of the centre tap alone, a 1x1 weight gradient
``dW_c = sum over (n, h, w) of g[n, :, h, w] x[n, :, h*s, w*s]^T`` (out x in), from which ``dA = B^T dW_c`` and
``dB = dW_c A^T`` follow. The frozen kernel gets no gradient.

Not faster on the CPU: ``dA`` and ``dB`` straight from the rank, ``dA = (B^T g) x_s^T`` and ``dB = g (A x_s)^T`` as
batched matrix products (``2 r (in + out)`` multiply-adds per pixel instead of ``in * out``). Faster than oneDNN's
1x1 weight gradient alone at most ResNet-18 shapes, but no gain in the whole training step could be shown side by
side (3 repeats, medians 1.32 against 1.27 over the floor; benchmarks/README.md, issue 14).

Why the centre tap is a 1x1 conv: with padding k // 2 and stride s, output pixel (h, w) sees input pixel
(h*s, w*s) through the centre tap, which is exactly a 1x1 conv of stride s and no padding.

Used by ``SPLoRAConv2d.forward`` while training with a frozen base (``applies``); evaluation, dependency tracing
(``spa.pruning`` unfreezes the base and switches to eval mode) and LRP (a merged copy) keep the two-conv path.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["applies", "centre_tap_conv2d", "enabled"]

_enabled = True


@contextmanager
def enabled(on: bool) -> Iterator[None]:
    """Turn the fused path on or off inside the block (benchmarks compare both in one process)."""
    global _enabled
    previous, _enabled = _enabled, on
    try:
        yield
    finally:
        _enabled = previous


def applies(layer: nn.Module) -> bool:
    """Whether ``layer`` (a ``SPLoRAConv2d``) should run fused: training, with its base kernel frozen."""
    return _enabled and layer.training and not layer.base_layer.weight.requires_grad


def centre_tap_conv2d(x: torch.Tensor, base: nn.Conv2d, lora_a: torch.Tensor, lora_b: torch.Tensor) -> torch.Tensor:
    """``base(x) + conv1x1(conv1x1(x, lora_a, stride), lora_b)`` as one conv; ``lora_a`` is (r, in, 1, 1),
    ``lora_b`` is (out, r, 1, 1). Needs an odd square kernel with padding k // 2, groups 1, dilation 1."""
    return _CentreTapConv2d.apply(x, base.weight, base.bias, lora_a, lora_b, base.stride, base.padding)


class _CentreTapConv2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, stride, padding):  # type: ignore[override]
        k = weight.shape[-1]
        delta = (lora_b.flatten(1) @ lora_a.flatten(1)).to(weight.dtype)  # (out, in)
        adapted = weight.clone()
        adapted[:, :, k // 2, k // 2] += delta
        ctx.save_for_backward(x, adapted, lora_a, lora_b)
        ctx.stride, ctx.padding, ctx.has_bias = stride, padding, bias is not None
        return F.conv2d(x, adapted, bias, stride, padding)

    @staticmethod
    def backward(ctx, grad_output):  # type: ignore[override]
        x, adapted, lora_a, lora_b = ctx.saved_tensors
        need_x, need_weight, need_bias, need_a, need_b = ctx.needs_input_grad[:5]
        # Under autocast the forward ran in a lower precision; the backward runs outside it, so cast here.
        dtype = grad_output.dtype
        x_c, adapted_c = x.to(dtype), adapted.to(dtype)
        grad_x = grad_weight = grad_bias = None
        mask = (need_x, need_weight, need_bias and ctx.has_bias)
        if any(mask):  # the stem's input needs no gradient: with a frozen base, nothing here is asked for
            grad_x, grad_weight, grad_bias = torch.ops.aten.convolution_backward(
                grad_output,
                x_c,
                adapted_c,
                [adapted.shape[0]] if ctx.has_bias else None,
                ctx.stride,
                ctx.padding,
                (1, 1),
                False,
                (0, 0),
                1,
                mask,
            )
        grad_a = grad_b = None
        if need_a or need_b:
            k = adapted.shape[-1]
            if grad_weight is not None:
                centre = grad_weight[:, :, k // 2, k // 2]
            else:  # the centre tap alone: a 1x1 weight gradient at the same stride, no padding
                centre = torch.ops.aten.convolution_backward(
                    grad_output,
                    x_c,
                    adapted_c[:, :, k // 2 : k // 2 + 1, k // 2 : k // 2 + 1],
                    None,
                    ctx.stride,
                    (0, 0),
                    (1, 1),
                    False,
                    (0, 0),
                    1,
                    (False, True, False),
                )[1].flatten(1)
            centre = centre.to(lora_a.dtype)  # (out, in)
            if need_a:
                grad_a = (lora_b.flatten(1).t() @ centre).view_as(lora_a)  # (r, in)
            if need_b:
                grad_b = (centre @ lora_a.flatten(1).t()).view_as(lora_b)  # (out, r)
        if grad_x is not None:
            grad_x = grad_x.to(x.dtype)
        if grad_weight is not None:
            grad_weight = grad_weight.to(adapted.dtype)
        if grad_bias is not None:
            grad_bias = grad_bias.to(adapted.dtype)
        return grad_x, grad_weight, grad_bias, grad_a, grad_b, None, None
