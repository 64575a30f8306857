"""Parameter and FLOP counting with the paper's definitions, at the dataset's real input size."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from spa import adapters

__all__ = [
    "learned_parameters",
    "projected_learned_parameters",
    "total_parameters",
    "flops",
    "conv_channels",
    "density",
    "network_convs",
]

# How learned parameters scale with channel density, by learner: SPLoRA's adapter factors (rank x (in + out)), the
# BatchNorm affine parameters and the head are each proportional to a layer's channels; fine-pruning learns the conv
# weights (in x out channels), so about the square.
LEARNED_PARAMETERS_DENSITY_POWER = {"splora": 1.0, "finetune": 2.0}


def learned_parameters(model: nn.Module) -> int:
    """Parameters that training updates and a deployment must store per task.

    Fine-pruning learns every remaining parameter; SPLoRA learns its adapter factors, the BatchNorm affine
    parameters and the head (``spa.adapters.mark_trainable`` sets which).
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def projected_learned_parameters(learned: float, *, learner: str, density: float, final_density: float) -> float:
    """The learned parameters of a network that has ``learned`` at ``density`` once pruned on to ``final_density``:
    ``learned * (final_density / density) ** power`` (``LEARNED_PARAMETERS_DENSITY_POWER``).

    An estimate: pruning removes channels where the scores say, not evenly, and no conv drops below its floor.
    Against recorded runs (issue 12): from the unpruned network, within -10 % to +4 % of the final count on 93 SPLoRA
    trials of ``benchmarks/search_quality.py --medium`` (4-5 % root mean square in log; from step 1, 2-3 %), and
    -13 % to -2 % for SPLoRA, -28 % to +39 % for fine-pruning on ``benchmarks/claim.py``'s runs to 30 % and 10 %.
    """
    if learner not in LEARNED_PARAMETERS_DENSITY_POWER:
        raise ValueError(f"learner={learner!r}; allowed: {', '.join(LEARNED_PARAMETERS_DENSITY_POWER)}")
    if not (density > 0 and final_density > 0):
        raise ValueError(f"densities must be > 0: {density=}, {final_density=}")
    return learned * (final_density / density) ** LEARNED_PARAMETERS_DENSITY_POWER[learner]


def total_parameters(model: nn.Module) -> int:
    """Parameters of the deployable model: adapters count as merged into their base layer."""
    adapter_factors = {
        id(p) for _, m in adapters.adapter_layers(model) for p in (*m.lora_a.parameters(), *m.lora_b.parameters())
    }
    return sum(p.numel() for p in model.parameters() if id(p) not in adapter_factors)


def flops(model: nn.Module, input_size: Sequence[int]) -> int:
    """Multiply-accumulates of one image of ``input_size`` (C, H, W) through the deployable model.

    Counted as in the paper: every conv and linear layer's MACs plus two operations per BatchNorm output
    element; activations, pooling and residual additions are free. An adapter counts as its merged conv.
    """
    total = 0
    skip: set[int] = set()

    def conv_hook(module: nn.Conv2d, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        if id(module) in skip:
            return
        k_h, k_w = module.kernel_size
        total += output.numel() * (module.in_channels // module.groups) * k_h * k_w

    def linear_hook(module: nn.Linear, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        if id(module) not in skip:
            total += output.numel() * module.in_features

    def bn_hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        total += 2 * output.numel()

    for _, layer in adapters.adapter_layers(model):
        skip.update((id(layer.lora_a), id(layer.lora_b)))
    handles = []
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(conv_hook))
        elif isinstance(module, nn.Linear):
            handles.append(module.register_forward_hook(linear_hook))
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            handles.append(module.register_forward_hook(bn_hook))
    was_training = model.training
    parameter = next(model.parameters())
    try:
        model.eval()
        with torch.inference_mode():
            model(torch.zeros(1, *input_size, device=parameter.device, dtype=parameter.dtype))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return total


def network_convs(model: nn.Module) -> list[nn.Conv2d]:
    """Every conv of the network itself (``spa.adapters.network_convs``), an adapted conv as its base conv."""
    return [adapters.producing_conv(layer) for layer in adapters.network_convs(model).values()]


def conv_channels(model: nn.Module) -> int:
    """Output channels summed over every conv of the network (stem, block and downsample convs)."""
    return sum(conv.out_channels for conv in network_convs(model))


def density(model: nn.Module, reference_channels: int) -> float:
    """Remaining fraction of conv output channels, against the unpruned network's ``conv_channels``."""
    return conv_channels(model) / reference_channels
