"""SPLoRA: a frozen pretrained layer plus a learned low-rank update that shrinks with the pruned network.

The update dW = B @ A sits at the kernel's centre tap. For a k x k convolution with padding k // 2 that is the
same as a 1 x 1 convolution of the same stride on the same input, so the adapter runs as its own two-conv path:
the frozen base conv then needs no weight gradient (the original research package builds W + dW every forward and
backpropagates through it, which made its step slower than full fine-tuning; see docs/METHOD.md). While training a
frozen base, ``SPLoRAConv2d`` runs one conv with W + dW instead, whose backward computes the input gradient and only
the centre tap's 1x1 weight gradient (``spa.fused``): the same outputs and gradients, fewer passes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import nn

from spa import fused
from spa.config import LEARNERS
from spa.validation import is_finite_number, is_int

__all__ = [
    "SPLoRAConv2d",
    "SPLoRALinear",
    "add_splora",
    "adapter_layers",
    "merge",
    "mark_trainable",
    "is_adapted",
    "network_convs",
    "producing_conv",
]


def _check_rank_and_range(rank: int, init_range: float) -> None:
    if not (is_int(rank) and rank >= 1):
        raise ValueError(f"SPLoRA rank must be an integer >= 1, got {rank!r}")
    if not (is_finite_number(init_range) and init_range > 0):
        raise ValueError(f"SPLoRA init_range must be a finite number > 0, got {init_range!r}")


class _SPLoRALayer(nn.Module):
    """What both adapters share: a frozen base layer plus the low-rank path ``lora_b(lora_a(x))``.

    A subclass builds ``lora_a`` (in -> r) and ``lora_b`` (r -> out) as layers of its base's kind and says how
    the product ``B @ A`` sits in the base's weight (``get_delta_weight``) and how to build an empty copy of the
    base (``_empty_base``); the forward, the adapted weight and the merge are the same for both.
    """

    base_layer: nn.Module
    lora_a: nn.Module
    lora_b: nn.Module

    def _init_factors(self, init_range: float) -> None:
        # As the original research code: A like nn.Linear's default init, B uniform in +-init_range (small, so dW
        # starts near 0).
        nn.init.kaiming_uniform_(self.lora_a.weight, a=math.sqrt(5))
        nn.init.uniform_(self.lora_b.weight, -init_range, init_range)

    @property
    def rank(self) -> int:
        return self.lora_a.weight.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_layer(x) + self.lora_b(self.lora_a(x))

    def get_delta_weight(self) -> torch.Tensor:
        """The update ``B @ A``, shape (out, in): one matrix serves ``adapted_weight`` and ``merged``."""
        return self.lora_b.weight.flatten(1) @ self.lora_a.weight.flatten(1)

    def adapted_weight(self) -> torch.Tensor:
        return self.base_layer.weight + self.get_delta_weight()

    def _empty_base(self) -> nn.Module:
        raise NotImplementedError

    def merged(self) -> nn.Module:
        """A plain layer computing the same function (for export, LRP and FLOP counting)."""
        layer = self._empty_base()
        with torch.no_grad():
            layer.weight.copy_(self.adapted_weight())
            if self.base_layer.bias is not None:
                layer.bias.copy_(self.base_layer.bias)
        return layer


class SPLoRAConv2d(_SPLoRALayer):
    """A frozen ``nn.Conv2d`` plus a low-rank centre-tap update ``B (out x r) @ A (r x in)``."""

    def __init__(self, base_layer: nn.Conv2d, rank: int, init_range: float) -> None:
        super().__init__()
        _check_rank_and_range(rank, init_range)
        k_h, k_w = base_layer.kernel_size
        if (
            k_h != k_w
            or k_h % 2 == 0
            or base_layer.groups != 1
            or base_layer.dilation != (1, 1)
            or base_layer.padding != (k_h // 2, k_w // 2)
            or base_layer.padding_mode != "zeros"
        ):
            raise ValueError(
                "SPLoRAConv2d needs an odd square kernel with padding k//2, groups=1 and dilation=1; got "
                f"kernel_size={base_layer.kernel_size}, padding={base_layer.padding}, "
                f"groups={base_layer.groups}, dilation={base_layer.dilation}"
            )
        self.base_layer = base_layer
        self.base_layer.requires_grad_(False)
        device, dtype = base_layer.weight.device, base_layer.weight.dtype
        # (r, in, 1, 1) and (out, r, 1, 1): the factors as 1x1 convs so the path runs at the base stride.
        self.lora_a = nn.Conv2d(
            base_layer.in_channels, rank, 1, stride=base_layer.stride, bias=False, device=device, dtype=dtype
        )
        self.lora_b = nn.Conv2d(rank, base_layer.out_channels, 1, bias=False, device=device, dtype=dtype)
        self._init_factors(init_range)
        # W + B @ A as the fused path last built it: kept between steps, not state (spa/fused.py).
        self.adapted_kernel = fused.AdaptedKernel()

    @property
    def in_channels(self) -> int:
        return self.base_layer.in_channels

    @property
    def out_channels(self) -> int:
        return self.base_layer.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if fused.applies(self):  # training with a frozen base: one conv with W + dW (spa/fused.py), same result
            return fused.centre_tap_conv2d(
                x, self.base_layer, self.lora_a.weight, self.lora_b.weight, self.adapted_kernel
            )
        return super().forward(x)

    def get_delta_weight(self) -> torch.Tensor:
        """The update as a full kernel: B @ A at the centre tap, zero elsewhere. Shape (out, in, k, k)."""
        k = self.base_layer.kernel_size[0]
        delta = torch.zeros_like(self.base_layer.weight)
        delta[:, :, k // 2, k // 2] = super().get_delta_weight()
        return delta

    def _empty_base(self) -> nn.Conv2d:
        base = self.base_layer
        return nn.Conv2d(
            base.in_channels,
            base.out_channels,
            base.kernel_size,
            stride=base.stride,
            padding=base.padding,
            bias=base.bias is not None,
            device=base.weight.device,
            dtype=base.weight.dtype,
        )


class SPLoRALinear(_SPLoRALayer):
    """A frozen ``nn.Linear`` plus a low-rank update ``B (out x r) @ A (r x in)``."""

    def __init__(self, base_layer: nn.Linear, rank: int, init_range: float) -> None:
        super().__init__()
        _check_rank_and_range(rank, init_range)
        self.base_layer = base_layer
        # As in the original research package: the bias of a linear layer stays trainable, the weight is frozen.
        self.base_layer.weight.requires_grad_(False)
        device, dtype = base_layer.weight.device, base_layer.weight.dtype
        self.lora_a = nn.Linear(base_layer.in_features, rank, bias=False, device=device, dtype=dtype)
        self.lora_b = nn.Linear(rank, base_layer.out_features, bias=False, device=device, dtype=dtype)
        self._init_factors(init_range)

    def _empty_base(self) -> nn.Linear:
        base = self.base_layer
        return nn.Linear(
            base.in_features,
            base.out_features,
            bias=base.bias is not None,
            device=base.weight.device,
            dtype=base.weight.dtype,
        )


AdapterLayer = SPLoRAConv2d | SPLoRALinear


def _wrap(module: nn.Module, rank: int, init_range: float) -> AdapterLayer:
    if isinstance(module, nn.Conv2d):
        return SPLoRAConv2d(module, rank, init_range)
    if isinstance(module, nn.Linear):
        return SPLoRALinear(module, rank, init_range)
    raise TypeError(f"no SPLoRA adapter for {type(module).__name__}; allowed: nn.Conv2d, nn.Linear")


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def add_splora(
    model: nn.Module,
    rank: int,
    init_range: float,
    *,
    target: Callable[[str, nn.Module], bool] | None = None,
    head: str = "fc",
) -> nn.Module:
    """Wrap the target layers of ``model`` in SPLoRA adapters, in place, and mark what is learned.

    ``target(name, module)`` selects layers; by default every ``nn.Conv2d`` (the head stays a fully trained,
    fresh layer). Afterwards exactly the adapter factors, the BatchNorm affine parameters and the head are
    trainable; everything else is frozen.
    """
    _check_rank_and_range(rank, init_range)
    if target is None:

        def target(name: str, module: nn.Module) -> bool:
            return isinstance(module, nn.Conv2d)

    # Collect first, then replace: the module tree must not change while it is being walked.
    found = [
        name
        for name, module in model.named_modules()
        if name and not isinstance(module, AdapterLayer) and not _inside_adapter(model, name) and target(name, module)
    ]
    if not found:
        raise ValueError("add_splora matched no layer: the target selects nothing in this model")
    for name in found:
        _set_submodule(model, name, _wrap(model.get_submodule(name), rank, init_range))
    mark_trainable(model, learner="splora", head=head)
    return model


def _inside_adapter(model: nn.Module, name: str) -> bool:
    parts = name.split(".")
    for i in range(1, len(parts)):
        if isinstance(model.get_submodule(".".join(parts[:i])), AdapterLayer):
            return True
    return False


def adapter_layers(model: nn.Module) -> Iterable[tuple[str, AdapterLayer]]:
    return ((n, m) for n, m in model.named_modules() if isinstance(m, AdapterLayer))


def network_convs(model: nn.Module) -> dict[str, nn.Conv2d | SPLoRAConv2d]:
    """Name -> layer of every conv of the network itself (stem, block and downsample convs), in module order.

    An adapted conv is its ``SPLoRAConv2d`` wrapper, named as the conv it replaced (``"layer1.0.conv1"``); the
    wrapper's ``base_layer`` and its ``lora_a``/``lora_b`` factor convs are not network convs. The one
    enumeration that counting, scoring and pruning share, so all three see the same convs under the same names.
    """
    inside = {id(c) for m in model.modules() if isinstance(m, SPLoRAConv2d) for c in (m.base_layer, m.lora_a, m.lora_b)}
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, SPLoRAConv2d) or (isinstance(module, nn.Conv2d) and id(module) not in inside)
    }


def producing_conv(layer: nn.Conv2d | SPLoRAConv2d) -> nn.Conv2d:
    """The conv whose weight holds ``layer``'s output channels: an adapter's frozen base, else the conv itself."""
    return layer.base_layer if isinstance(layer, SPLoRAConv2d) else layer


def is_adapted(model: nn.Module) -> bool:
    return any(True for _ in adapter_layers(model))


def mark_trainable(model: nn.Module, learner: str, *, head: str = "fc") -> None:
    """Set ``requires_grad`` by structure: ``finetune`` learns everything; ``splora`` learns the adapter
    factors, BatchNorm affine parameters, the head and the biases of adapted linear layers."""
    if learner == "finetune":
        model.requires_grad_(True)
        return
    if learner != "splora":
        raise ValueError(f"unknown learner {learner!r}; allowed: {', '.join(map(repr, LEARNERS))}")
    model.requires_grad_(False)
    for module in model.modules():
        if isinstance(module, AdapterLayer):
            module.lora_a.requires_grad_(True)
            module.lora_b.requires_grad_(True)
            if isinstance(module, SPLoRALinear) and module.base_layer.bias is not None:
                module.base_layer.bias.requires_grad_(True)
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.requires_grad_(True)
    head_module = getattr(model, head, None)
    if head_module is not None:
        if isinstance(head_module, SPLoRALinear):
            return  # an adapted head learns only its factors and bias
        head_module.requires_grad_(True)


def merge(model: nn.Module) -> nn.Module:
    """Fold every adapter into a plain layer, in place; returns ``model`` (now without adapters)."""
    for name, layer in list(adapter_layers(model)):
        merged = layer.merged()
        merged.requires_grad_(False)
        _set_submodule(model, name, merged)
    return model
