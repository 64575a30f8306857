"""Physical, dependency-aware channel pruning: a pruned channel is gone, not masked.

The original research code (docs/METHOD.md) zeroes weights once and never again, so fine-tuning regrows them and
SPLoRA's adapter rows keep the "pruned" channels alive; and it prunes one branch of a residual sum only. Here every
pruned output channel is removed from the tensors of every layer that touches it (conv, BatchNorm, adapter
factors, the next layers' inputs, the head), so no training step can bring it back, and channels tied by residual
additions go together.

Torch-Pruning's ``DependencyGraph`` finds those ties by tracing autograd. An adapted conv needs no custom pruner:
``SPLoRAConv2d.forward`` is ``base(x) + lora_b(lora_a(x))``, so the trace already shows the add that ties the
output channels of ``base_layer`` and ``lora_b``, and the shared input that ties the input channels of
``base_layer`` and ``lora_a``. The rank (``lora_a`` outputs, ``lora_b`` inputs) is tied to nothing else and would
only be pruned by a group rooted at ``lora_a``; groups here are rooted at network convs only, and every group is
checked to leave the rank, the image channels and the head's outputs alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

from spa.adapters import adapter_layers, network_convs, producing_conv
from spa.counting import conv_channels
from spa.validation import is_finite_number, is_int

__all__ = [
    "Scores",
    "ChannelGroup",
    "channel_groups",
    "fewest_channels",
    "network_conv_names",
    "prune_to_channels",
    "prune_to_density",
]

Scores = dict[str, torch.Tensor]
"""Conv module name -> 1-D per-output-channel score, higher = keep. An adapted conv is named by its
``SPLoRAConv2d`` wrapper (``"layer1.0.conv1"``), not by ``".base_layer"``."""


@dataclass(frozen=True)
class ChannelGroup:
    """Convs whose output channels are tied (by residual additions): channel j of one is channel j of all.

    Removing one channel of the group removes it from every member, so it costs ``len(members)`` conv channels.
    """

    members: tuple[str, ...]  # conv names in module order
    size: int  # channels per member

    @property
    def cost(self) -> int:
        """Conv output channels removed per removed coupled channel."""
        return len(self.members)


def network_conv_names(model: nn.Module) -> dict[str, nn.Conv2d]:
    """Name -> the conv producing that layer's output channels, for every conv of ``spa.adapters.network_convs``.

    An adapted conv is named by its wrapper and maps to the wrapper's frozen ``base_layer``.
    """
    return {name: producing_conv(layer) for name, layer in network_convs(model).items()}


def channel_groups(model: nn.Module, example_input: torch.Tensor) -> list[ChannelGroup]:
    """Every network conv in exactly one group, groups ordered by their first member's position in the model."""
    with _requires_grad_restored(model):
        graph = _dependency_graph(model, example_input)
        return [group for group, _ in _coupled_groups(model, graph)]


def fewest_channels(model: nn.Module, min_channels: int) -> int:
    """The fewest conv output channels pruning can leave ``model`` with: ``min_channels`` per conv (its own width
    if narrower). Tied convs have equal widths, so this is also the sum over the coupled groups."""
    return sum(min(min_channels, conv.out_channels) for conv in network_conv_names(model).values())


def prune_to_density(
    model: nn.Module,
    scores: Scores,
    density: float,
    reference_channels: int,
    example_input: torch.Tensor,
    *,
    min_channels: int,
) -> int:
    """``prune_to_channels`` with target ``round(density * reference_channels)``; ``reference_channels`` is the
    unpruned network's ``spa.counting.conv_channels``. Returns the number of conv output channels removed."""
    if not (is_finite_number(density) and 0 < density <= 1):
        raise ValueError(f"density={density!r} is not allowed; allowed: a number in (0, 1]")
    if not (is_int(reference_channels) and reference_channels >= 1):
        raise ValueError(f"reference_channels={reference_channels!r} is not allowed; allowed: an integer >= 1")
    return prune_to_channels(
        model, scores, round(density * reference_channels), example_input, min_channels=min_channels
    )


def prune_to_channels(
    model: nn.Module, scores: Scores, target_channels: int, example_input: torch.Tensor, *, min_channels: int
) -> int:
    """Remove the lowest-scored coupled channels until ``conv_channels(model) <= target_channels``.

    Ranking is global over all groups. A coupled channel (one residual-stream channel, removable only from every
    member at once) scores the mean of its members' scores for that channel. That is its summed score per conv
    channel it costs, so a residual channel (3 to 7 conv channels in ResNet-18/50) and an uncoupled one compete
    on the same per-channel scale that the per-layer score normalisation sets. Channels go in ascending score
    (ties: model order, then channel index), skipping any whose group is down to ``min_channels`` (or to its own
    width, if narrower), until the target is met; the last one may overshoot it by less than its group's cost.
    The floor exists because global ranking can empty whole stages in one deep cut (lrp at 5 % left one channel in
    every layer3/layer4 conv, and no recovery brought the network back; ``spa.config.PruneConfig.min_channels``).

    In place; the model keeps its train/eval mode and every parameter keeps its ``requires_grad`` flag (the
    pruned tensors are new ``nn.Parameter`` objects, so an optimizer built before this call is stale).
    Returns the number of conv output channels removed (0 if the model is already at or below the target).
    """
    if not is_int(target_channels):
        raise ValueError(f"target_channels={target_channels!r} is not allowed; allowed: an integer")
    if not (is_int(min_channels) and min_channels >= 1):
        raise ValueError(f"min_channels={min_channels!r} is not allowed; allowed: an integer >= 1")
    convs = network_conv_names(model)
    _check_scores(scores, convs)
    current = conv_channels(model)
    if target_channels >= current:
        return 0
    with _requires_grad_restored(model):
        graph = _dependency_graph(model, example_input)
        groups = _coupled_groups(model, graph)
        floors = [min(min_channels, group.size) for group, _ in groups]
        minimum = fewest_channels(model, min_channels)
        if target_channels < minimum:
            raise ValueError(
                f"target_channels={target_channels} is not allowed; allowed: >= {minimum} "
                f"(min_channels={min_channels} in each of the {len(groups)} coupled groups)"
            )
        plan = _select_channels([group for group, _ in groups], scores, current - target_channels, floors)
        ranks = {name: m.rank for name, m in adapter_layers(model)}
        for (_, root), idxs in zip(groups, plan, strict=True):
            if idxs:
                pruner = graph.get_pruner_of_module(root)
                graph.get_pruning_group(root, pruner.prune_out_channels, idxs).prune()
    removed = current - conv_channels(model)
    expected = sum(len(idxs) * group.cost for (group, _), idxs in zip(groups, plan, strict=True))
    changed = {name: m.rank for name, m in adapter_layers(model)} != ranks
    if removed != expected or changed:
        raise RuntimeError(
            f"pruning went wrong: removed {removed} conv channels, planned {expected}; adapter ranks changed: {changed}"
        )
    return removed


def _select_channels(groups: list[ChannelGroup], scores: Scores, needed: int, floors: list[int]) -> list[list[int]]:
    """Per group, the channel indices to remove: greedy over all coupled channels by ascending mean score, never
    leaving a group with fewer than its ``floors`` entry."""
    coupled = [
        torch.stack([scores[name].detach().to("cpu", torch.float64) for name in group.members]).mean(0)
        for group in groups
    ]
    flat = torch.cat(coupled)
    group_of = torch.cat([torch.full((g.size,), i) for i, g in enumerate(groups)]).tolist()
    channel_of = torch.cat([torch.arange(g.size) for g in groups]).tolist()
    order = torch.sort(flat, stable=True).indices.tolist()  # stable: ties keep model order
    remaining = [g.size for g in groups]
    plan: list[list[int]] = [[] for _ in groups]
    removed = 0
    for k in order:
        if removed >= needed:
            break
        g = group_of[k]
        if remaining[g] <= floors[g]:
            continue
        plan[g].append(channel_of[k])
        remaining[g] -= 1
        removed += groups[g].cost
    return [sorted(idxs) for idxs in plan]


def _check_scores(scores: Scores, convs: dict[str, nn.Conv2d]) -> None:
    if not isinstance(scores, dict):
        raise ValueError(f"scores must be a dict of conv name -> 1-D tensor, got {type(scores).__name__}")
    missing = [name for name in convs if name not in scores]
    if missing:
        raise ValueError(f"scores miss convs {missing[:5]} ({len(missing)} in all); allowed: a score for every conv")
    unknown = [name for name in scores if name not in convs]
    if unknown:
        raise ValueError(
            f"scores name unknown convs {unknown[:5]}; allowed: the network conv names {list(convs)[:3]}..."
        )
    for name, conv in convs.items():
        score = scores[name]
        if not isinstance(score, torch.Tensor) or tuple(score.shape) != (conv.out_channels,):
            shape = tuple(score.shape) if isinstance(score, torch.Tensor) else type(score).__name__
            raise ValueError(f"scores[{name!r}] has shape {shape}; allowed: a 1-D tensor of length {conv.out_channels}")
        if not bool(torch.isfinite(score).all()):
            raise ValueError(f"scores[{name!r}] holds non-finite values; allowed: finite numbers")


@contextmanager
def _requires_grad_restored(model: nn.Module) -> Iterator[None]:
    """Restore every parameter's ``requires_grad`` by name on exit.

    Tracing needs every conv output to have a ``grad_fn`` (a frozen base conv on an input without grad has none,
    and would drop out of the graph), and torch-pruning's pruned tensors are new parameters with
    ``requires_grad=True``; by name is the only handle that survives both.
    """
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    try:
        yield
    finally:
        for name, p in model.named_parameters():
            p.requires_grad_(flags[name])


def _dependency_graph(model: nn.Module, example_input: torch.Tensor) -> tp.DependencyGraph:
    was_training = model.training
    try:
        for p in model.parameters():
            p.requires_grad_(True)
        with torch.enable_grad():  # tracing reads autograd's graph; the tracer puts the model in eval mode
            # A tuple: torch-pruning first tries model(*example_inputs), which would split a bare tensor's batch.
            graph = tp.DependencyGraph().build_dependency(model, example_inputs=(example_input,), verbose=False)
    finally:
        model.train(was_training)
    return graph


def _coupled_groups(model: nn.Module, graph: tp.DependencyGraph) -> list[tuple[ChannelGroup, nn.Conv2d]]:
    """Each coupled group with the conv to root its pruning at; checks what each group would touch."""
    convs = network_conv_names(model)
    name_of = {id(conv): name for name, conv in convs.items()}
    position = {name: i for i, name in enumerate(convs)}
    ranks = {id(m.lora_a): name for name, m in adapter_layers(model)}
    untraced = [name for name, conv in convs.items() if conv not in graph.module2node]
    if untraced:
        raise RuntimeError(f"the example input did not reach convs {untraced[:5]}; they cannot be pruned")
    grouped: set[str] = set()
    groups: list[tuple[ChannelGroup, nn.Conv2d]] = []
    for name, conv in convs.items():
        if name in grouped:
            continue
        pruner = graph.get_pruner_of_module(conv)
        dependencies = graph.get_pruning_group(conv, pruner.prune_out_channels, list(range(conv.out_channels)))
        members: set[str] = set()
        for item in dependencies.items:
            target = item.dep.target
            if not graph.is_out_channel_pruning_fn(item.dep.handler) and target.type != tp.ops.OPTYPE.OUTPUT:
                continue
            if id(target.module) in name_of:
                member = name_of[id(target.module)]
                if list(item.idxs) != list(item.root_idxs) or target.module.out_channels != conv.out_channels:
                    raise RuntimeError(f"{member!r} is tied to {name!r} by a non-identity channel mapping")
                members.add(member)
            elif id(target.module) in ranks:
                raise RuntimeError(f"pruning {name!r} would prune the rank of the adapter {ranks[id(target.module)]!r}")
            elif isinstance(target.module, nn.Linear) or target.type == tp.ops.OPTYPE.OUTPUT:
                raise RuntimeError(f"pruning {name!r} would prune the model's outputs")
        ordered = tuple(sorted(members, key=position.__getitem__))
        grouped.update(ordered)
        groups.append((ChannelGroup(members=ordered, size=conv.out_channels), conv))
    return groups
