"""The deployable network of a pruning-step checkpoint, and what pruning kept of it.

A checkpoint (``spa.checkpoint``) holds the trained network's tensors and the flat ``ExperimentConfig``: enough to
rebuild it with no pretrained weights and no data. ``restore_model`` gives the network exactly as the experiment
had it (adapters in place, the learned parameters marked); ``deployable_model`` is what one would ship: adapters
merged into plain convs, pruned channels physically gone, BatchNorm with its trained statistics, eval mode, CPU,
no gradients. ``kept_channels`` says per conv how many output channels survived the global ranking.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from spa import adapters
from spa.checkpoint import resize_to
from spa.config import ExperimentConfig
from spa.experiment import build_model
from spa.pruning import network_conv_names

__all__ = [
    "LayerChannels",
    "checkpoint_config",
    "num_classes",
    "unpruned_parameters",
    "restore_model",
    "deployable_model",
    "kept_channels",
]


@dataclass(frozen=True)
class LayerChannels:
    """One network conv: its name, the output channels it kept, and the unpruned network's count."""

    name: str
    kept: int
    total: int


def checkpoint_config(checkpoint: Mapping[str, Any]) -> ExperimentConfig:
    return ExperimentConfig.from_flat(dict(checkpoint["config"]))


def _shape_of(state: Mapping[str, torch.Tensor]) -> tuple[int, bool]:
    """(num_classes, cifar_stem) as the saved tensors say: the head's rows and the stem's kernel size."""
    head = state.get("fc.weight", state.get("fc.base_layer.weight"))
    stem = state.get("conv1.weight", state.get("conv1.base_layer.weight"))
    if head is None or stem is None:
        raise ValueError(f"not a ResNet checkpoint: no head or stem weight among {list(state)[:5]} ...")
    return int(head.shape[0]), int(stem.shape[-1]) == 3


def _unpruned(checkpoint: Mapping[str, Any]) -> nn.Module:
    num_classes, cifar_stem = _shape_of(checkpoint["model"])
    # weights=None: every tensor comes from the checkpoint, so nothing pretrained is needed.
    return build_model(checkpoint_config(checkpoint), num_classes, cifar_stem, weights=None)


def num_classes(checkpoint: Mapping[str, Any]) -> int:
    return _shape_of(checkpoint["model"])[0]


def unpruned_parameters(checkpoint: Mapping[str, Any]) -> int:
    """Parameters of the unpruned network of this architecture and head: what fine-tuning it learns."""
    from spa.counting import total_parameters

    return total_parameters(_unpruned(checkpoint))


def restore_model(checkpoint: Mapping[str, Any]) -> nn.Module:
    """The network of ``checkpoint`` as the experiment had it at that step (CPU, training flags as built)."""
    model = _unpruned(checkpoint)
    state = checkpoint["model"]
    resize_to(model, state)
    model.load_state_dict(state)
    return model


def deployable_model(checkpoint: Mapping[str, Any]) -> nn.Module:
    """Adapters merged, pruned channels gone, trained BatchNorm statistics, eval mode, float32 on the CPU."""
    model = adapters.merge(restore_model(checkpoint))
    model.requires_grad_(False)
    return model.float().eval()


def kept_channels(checkpoint: Mapping[str, Any]) -> list[LayerChannels]:
    """Every network conv in module order with the output channels it kept of the unpruned network's."""
    total = {name: conv.out_channels for name, conv in network_conv_names(_unpruned(checkpoint)).items()}
    kept = {name: conv.out_channels for name, conv in network_conv_names(restore_model(checkpoint)).items()}
    return [LayerChannels(name, kept[name], total[name]) for name in total]
