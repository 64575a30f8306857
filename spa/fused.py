"""A SPLoRA conv as one convolution: ``conv(x, W + delta)`` with ``delta = B @ A`` at the kernel's centre tap.

The adapter's own path (``base(x) + lora_b(lora_a(x))``, see ``spa.adapters``) runs two extra 1x1 convolutions
forward, two more input gradients backward, and adds two full-size activations (the outputs, and the input
gradients). Folding the update into the kernel removes all of that: the forward is one convolution, and the
backward is the frozen network's input gradient plus the gradient of the centre tap alone, a 1x1 weight gradient
``dW_c = sum over (n, h, w) of g[n, :, h, w] x[n, :, h*s, w*s]^T`` (out x in), from which ``dA = B^T dW_c`` and
``dB = dW_c A^T`` follow. The frozen kernel gets no gradient.

On the CPU the factors' gradients skip ``dW_c`` altogether (``low_rank_gradients``): ``dA = (B^T g) x_s^T`` and
``dB = g (A x_s)^T`` as batched matrix products of rank r, ``2 r (in + out)`` multiply-adds per pixel instead of
``in * out``. oneDNN's 1x1 weight gradient costs far more inside a training step than alone (profiled, ResNet-18
batch 32: +107 ms on a 298 ms floor step, against about 23 ms alone); side by side, the step with it measured 1.19x
the floor against 1.12x with the batched products (CPU seconds, 1 thread; benchmarks/README.md, issue 14). Each
product reads x or g whole, so the four read each twice from memory; at 128 pixels per sample and more they run a
sample at a time on one thread, and the second read of a sample comes from cache (``_per_sample``). On CUDA the 1x1
weight gradient stays with cuDNN until a GPU measures the other.

Why the centre tap is a 1x1 conv: with padding k // 2 and stride s, output pixel (h, w) sees input pixel
(h*s, w*s) through the centre tap, which is exactly a 1x1 conv of stride s and no padding.

The adapted kernel ``W + delta`` is kept per layer (``AdaptedKernel``) rather than built afresh every step: a full
copy of every kernel per step reads all of W (the centre taps are strided, so every cache line) and writes a new
kernel. The kept kernel is rebuilt only when the frozen weight changes (another tensor, shape, dtype or device, or
an in-place write, which bumps the tensor's version counter: ``load_state_dict``, ``copy_`` under ``no_grad``);
each call rewrites only its centre tap, from a contiguous copy of W's centre. A backward whose centre tap another
call has rewritten since its forward writes its own back first, from the factors it saved (autograd checks their
versions), so interleaved forwards and backwards stay exact. Writes through ``weight.data`` bypass the version
counter and are not seen: change a frozen weight by assignment or in place, not through ``.data``. Under
``torch.compile`` and inference mode the kernel is built per call, as before.

Used by ``SPLoRAConv2d.forward`` while training with a frozen base (``applies``); evaluation, dependency tracing
(``spa.pruning`` unfreezes the base and switches to eval mode) and LRP (a merged copy) keep the two-conv path.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "AdaptedKernel",
    "applies",
    "centre_tap_conv2d",
    "centre_tap_gradient",
    "enabled",
    "low_rank_gradients",
]

_enabled = True
# The overload itself: calling the packet (torch.ops.aten.convolution_backward) resolves it in Python on every call.
_CONVOLUTION_BACKWARD = torch.ops.aten.convolution_backward.default
# Pixels per sample from which the CPU's factor gradients run a sample at a time on one thread (``_per_sample``):
# ResNet-18 at batch 32, cold caches, per conv: 5.3 -> 3.8 ms at 32 x 32 px, 2.2 -> 2.0 at 16 x 16, even at 8 x 8.
CHUNK_PIXELS = 128


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


def centre_tap_conv2d(
    x: torch.Tensor,
    base: nn.Conv2d,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    kernel: AdaptedKernel | None = None,
) -> torch.Tensor:
    """``base(x) + conv1x1(conv1x1(x, lora_a, stride), lora_b)`` as one conv; ``lora_a`` is (r, in, 1, 1),
    ``lora_b`` is (out, r, 1, 1). Needs an odd square kernel with padding k // 2, groups 1, dilation 1.
    ``kernel``: the layer's kept adapted kernel; without one, the kernel is built for this call alone."""
    if torch.compiler.is_compiling() or torch.is_inference_mode_enabled():
        kernel = None  # compiled graphs hold no Python-side state; inference tensors cannot be kept and rewritten
    return _CentreTapConv2d.apply(x, base.weight, base.bias, lora_a, lora_b, base.stride, base.padding, kernel)


class _Kept:
    """One built kernel: ``kernel`` (out, in, k, k) is W with ``B @ A`` added at its centre tap (``centre_tap``, a
    view); ``centre`` is W's centre tap (out, in), contiguous; ``weight`` aliases the W it was built from (holding
    its storage, so no other tensor can take its address) and ``version`` is W's version counter then; ``writer``
    marks the call whose factors the centre tap now holds."""

    def __init__(self, weight: torch.Tensor) -> None:
        self.weight, self.version = weight.detach(), weight._version
        self.kernel = weight.detach().clone()
        centre = weight.shape[-1] // 2
        self.centre_tap = self.kernel[:, :, centre, centre]
        self.centre = weight.detach()[:, :, centre, centre].contiguous()
        self.writer: object = None

    def built_from(self, weight: torch.Tensor) -> bool:
        kept = self.weight
        return (
            weight.data_ptr() == kept.data_ptr()
            and weight._version == self.version
            and weight.shape == kept.shape
            and weight.stride() == kept.stride()
            and weight.dtype == kept.dtype
            and weight.device == kept.device
        )

    def write_centre(self, lora_a: torch.Tensor, lora_b: torch.Tensor, writer: object) -> torch.Tensor:
        """The centre tap := W's centre + B @ A, in place, unless ``writer``'s factors are there already (the sum
        is the one ``_fresh_kernel`` computes). Returns the kernel."""
        if self.writer is not writer:
            if torch.is_grad_enabled():  # a backward with create_graph=True; forwards and plain backwards run without
                with torch.no_grad():
                    torch.add(self.centre, _delta(lora_a, lora_b, self.kernel.dtype), out=self.centre_tap)
            else:
                torch.add(self.centre, _delta(lora_a, lora_b, self.kernel.dtype), out=self.centre_tap)
            self.writer = writer
        return self.kernel


class AdaptedKernel:
    """A layer's kept adapted kernel ``W + B @ A``: rebuilt when W changes, its centre tap rewritten per call.

    Not state: a copy (``copy.deepcopy``, pickling) starts empty and builds its own on its first call.
    """

    def __init__(self) -> None:
        self._kept: _Kept | None = None

    def __deepcopy__(self, memo: dict[int, object]) -> AdaptedKernel:
        return AdaptedKernel()

    def __getstate__(self) -> dict[str, object]:
        return {}

    def __setstate__(self, state: dict[str, object]) -> None:
        self._kept = None

    def written(self, weight: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor, writer: object) -> _Kept:
        """The kept kernel for ``weight`` (rebuilt if W changed), its centre tap written from these factors."""
        if self._kept is None or not self._kept.built_from(weight):
            self._kept = _Kept(weight)
        self._kept.write_centre(lora_a, lora_b, writer)
        return self._kept


def _delta(lora_a: torch.Tensor, lora_b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    delta = lora_b.flatten(1) @ lora_a.flatten(1)  # (out, in)
    return delta if delta.dtype == dtype else delta.to(dtype)


def _fresh_kernel(weight: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor) -> torch.Tensor:
    """``W + delta`` built for one call (what ``torch.compile`` traces)."""
    centre = weight.shape[-1] // 2
    adapted = weight.clone()
    adapted[:, :, centre, centre] += _delta(lora_a, lora_b, weight.dtype)
    return adapted


class _CentreTapConv2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, stride, padding, kernel):  # type: ignore[override]
        if kernel is None:
            ctx.kept, adapted = None, _fresh_kernel(weight, lora_a, lora_b)
            ctx.save_for_backward(x, lora_a, lora_b, adapted)
        else:
            ctx.writer = object()  # this call: its backward checks that the kept centre tap still holds its factors
            ctx.kept = kernel.written(weight, lora_a, lora_b, ctx.writer)
            adapted = ctx.kept.kernel
            ctx.save_for_backward(x, lora_a, lora_b)
        ctx.stride, ctx.padding, ctx.has_bias = stride, padding, bias is not None
        return F.conv2d(x, adapted, bias, stride, padding)

    @staticmethod
    def backward(ctx, grad_output):  # type: ignore[override]
        x, lora_a, lora_b, *fresh = ctx.saved_tensors
        kept = ctx.kept
        if kept is None:
            adapted = fresh[0]
        else:  # a later call may have rewritten the kept centre tap since this forward: then this writes ours back
            adapted = kept.kernel if kept.writer is ctx.writer else kept.write_centre(lora_a, lora_b, ctx.writer)
        need_x, need_weight, need_bias, need_a, need_b = ctx.needs_input_grad[:5]
        # Under autocast the forward ran in a lower precision; the backward runs outside it, so cast here.
        dtype = grad_output.dtype
        x_c = x if x.dtype == dtype else x.to(dtype)
        grad_x = grad_weight = grad_bias = None
        has_bias = ctx.has_bias
        if need_x or need_weight or (need_bias and has_bias):  # the stem's input needs no gradient
            grad_x, grad_weight, grad_bias = _CONVOLUTION_BACKWARD(
                grad_output,
                x_c,
                adapted if adapted.dtype == dtype else adapted.to(dtype),
                [adapted.shape[0]] if has_bias else None,
                ctx.stride,
                ctx.padding,
                (1, 1),
                False,
                (0, 0),
                1,
                (need_x, need_weight, need_bias and has_bias),
            )
            if grad_x is not None and grad_x.dtype != x.dtype:
                grad_x = grad_x.to(x.dtype)
            if grad_weight is not None:
                grad_weight = grad_weight.to(adapted.dtype)
            if grad_bias is not None:
                grad_bias = grad_bias.to(adapted.dtype)
        grad_a = grad_b = None
        if need_a or need_b:
            k = adapted.shape[-1]
            if grad_weight is not None:  # the base learns too: its centre tap is dW_c
                grad_a, grad_b = _factor_gradients(grad_weight[:, :, k // 2, k // 2], lora_a, lora_b)
            elif x.device.type == "cpu":
                grad_a, grad_b = low_rank_gradients(grad_output, x_c, lora_a, lora_b, ctx.stride)
            else:
                grad_a, grad_b = _factor_gradients(centre_tap_gradient(grad_output, x_c, ctx.stride), lora_a, lora_b)
            grad_a, grad_b = (grad_a if need_a else None), (grad_b if need_b else None)
        return grad_x, grad_weight, grad_bias, grad_a, grad_b, None, None, None


def _factor_gradients(
    centre: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``dA = B^T dW_c`` (r, in) and ``dB = dW_c A^T`` (out, r) from the centre tap's gradient ``dW_c`` (out, in)."""
    centre = centre.to(lora_a.dtype)
    grad_a = (lora_b.flatten(1).t() @ centre).view_as(lora_a)
    grad_b = (centre @ lora_a.flatten(1).t()).view_as(lora_b)
    return grad_a, grad_b


def centre_tap_gradient(grad_output: torch.Tensor, x: torch.Tensor, stride: tuple[int, int]) -> torch.Tensor:
    """``dW_c`` (out, in): the weight gradient of a 1x1 conv of ``stride`` and no padding, from the conv library."""
    weight = x.new_empty(grad_output.shape[1], x.shape[1], 1, 1)  # only its shape is read
    return _CONVOLUTION_BACKWARD(
        grad_output, x, weight, None, stride, (0, 0), (1, 1), False, (0, 0), 1, (False, True, False)
    )[1].flatten(1)


def low_rank_gradients(
    grad_output: torch.Tensor, x: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor, stride: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``dA = sum_n (B^T g_n) x_n^T`` (r, in) and ``dB = sum_n g_n (A x_n)^T`` (out, r), never forming ``dW_c``.

    ``x_n`` is sample n's input at the pixels the centre tap reads, ``x[n, :, ::s, ::s]`` flattened to (in, P),
    and ``g_n`` its output gradient (out, P).
    """
    batch, rank = x.shape[0], lora_a.shape[0]
    if stride != (1, 1):
        x = x[:, :, :: stride[0], :: stride[1]]
    inputs = x.reshape(batch, x.shape[1], -1)  # (N, in, P)
    grads = grad_output.reshape(batch, grad_output.shape[1], -1)  # (N, out, P)
    a, b_t = lora_a.view(rank, -1), lora_b.view(-1, rank).t()  # (r, in), (r, out)
    if a.dtype != x.dtype:
        a, b_t = a.to(x.dtype), b_t.to(x.dtype)
    if (
        x.device.type == "cpu"
        and inputs.shape[2] >= CHUNK_PIXELS
        and not torch.compiler.is_compiling()  # the thread count is no tensor: asking for it would break the graph
        and torch.get_num_threads() == 1
    ):
        grad_a, grad_b_t = _per_sample(grads, inputs, a, b_t)
    else:
        # bmm over the factor expanded (no copy): matmul would fold (N, out, P) into (N * P, out), a transposed copy.
        projected_grads = torch.bmm(b_t.expand(batch, -1, -1), grads)  # (N, r, P): B^T g
        projected_inputs = torch.bmm(a.expand(batch, -1, -1), inputs)  # (N, r, P): A x, the lora_a conv's output
        grad_a = torch.bmm(projected_grads, inputs.transpose(1, 2)).sum(0)  # (r, in)
        # dB^T = (A x) g^T, (r, out): the long operand on the right reads faster than g (A x)^T (1.6x here).
        grad_b_t = torch.bmm(projected_inputs, grads.transpose(1, 2)).sum(0)
    if grad_a.dtype != lora_a.dtype:
        grad_a, grad_b_t = grad_a.to(lora_a.dtype), grad_b_t.to(lora_b.dtype)
    return grad_a.view(lora_a.shape), grad_b_t.t().reshape(lora_b.shape)


def _per_sample(
    grads: torch.Tensor, inputs: torch.Tensor, a: torch.Tensor, b_t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``low_rank_gradients``' four products one sample at a time, so each sample's ``x_n`` and ``g_n`` are read from
    memory once and reused from cache by the second product that needs them (the whole-batch products read x and g
    twice each). Returns ``dA`` (r, in) and ``dB^T`` (r, out).

    Used with one thread only: with two, chunks of one sample per thread made each conv's backward 64 small
    parallel regions instead of 4, and the step measured 1.72x the floor against 1.20x whole-batch (wall clock,
    load 6-16: a region waits for whichever thread the machine has descheduled)."""
    sum_a, sum_b_t = a.new_zeros(1, *a.shape), b_t.new_zeros(1, *b_t.shape)  # (1, r, in), (1, r, out)
    a_1, b_t_1 = a.unsqueeze(0), b_t.unsqueeze(0)
    for g_n, x_n in zip(grads.split(1), inputs.split(1), strict=True):  # (1, out, P), (1, in, P)
        sum_a.baddbmm_(torch.bmm(b_t_1, g_n), x_n.transpose(1, 2))  # += (B^T g) x^T
        sum_b_t.baddbmm_(torch.bmm(a_1, x_n), g_n.transpose(1, 2))  # += (A x) g^T
    return sum_a[0], sum_b_t[0]
