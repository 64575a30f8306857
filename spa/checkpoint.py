"""Checkpoints of physically pruned models.

A pruned model no longer has the shapes its builder makes, so a plain ``load_state_dict`` cannot restore it.
Every layer of a ResNet that pruning touches is a Conv2d, BatchNorm2d or Linear whose shapes are fully given by
its tensors, so the saved tensors say how to shrink a freshly built model first (``resize_to``). This keeps
checkpoints plain tensors (loaded with ``weights_only=True``) instead of pickled modules.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from spa.files import write_atomically

__all__ = ["resize_to", "save_checkpoint", "load_checkpoint", "CHECKPOINT_FILE"]

CHECKPOINT_FILE = "checkpoint.pt"


def _resized_parameter(old: nn.Parameter, shape: torch.Size) -> nn.Parameter:
    return nn.Parameter(old.new_empty(shape), requires_grad=old.requires_grad)


def resize_to(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """Shrink the model's conv, BatchNorm and linear layers in place to the shapes in ``state``."""
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        weight = state.get(prefix + "weight")
        if weight is None:
            continue
        if isinstance(module, nn.Conv2d) and weight.shape != module.weight.shape:
            module.out_channels, module.in_channels = weight.shape[0], weight.shape[1] * module.groups
            module.weight = _resized_parameter(module.weight, weight.shape)
            if module.bias is not None:
                module.bias = _resized_parameter(module.bias, weight.shape[:1])
        elif isinstance(module, nn.Linear) and weight.shape != module.weight.shape:
            module.out_features, module.in_features = weight.shape
            module.weight = _resized_parameter(module.weight, weight.shape)
            if module.bias is not None:
                module.bias = _resized_parameter(module.bias, weight.shape[:1])
        elif isinstance(module, nn.modules.batchnorm._BatchNorm) and weight.shape != module.weight.shape:
            module.num_features = weight.shape[0]
            module.weight = _resized_parameter(module.weight, weight.shape)
            module.bias = _resized_parameter(module.bias, weight.shape)
            module.running_mean = module.running_mean.new_empty(weight.shape)
            module.running_var = module.running_var.new_empty(weight.shape)
    return model


def save_checkpoint(directory: str | Path, model: nn.Module, extra: dict[str, Any]) -> Path:
    """Write ``checkpoint.pt`` atomically (a killed writer never leaves a truncated checkpoint)."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return write_atomically(
        Path(directory) / CHECKPOINT_FILE, lambda temporary: torch.save({"model": state, **extra}, temporary)
    )


def load_checkpoint(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / CHECKPOINT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {str(path)!r}")
    return torch.load(path, map_location="cpu", weights_only=True)
