"""Channel-importance criteria: one 1-D score per output channel of every conv, higher = more important.

``score_channels(model, loader, criterion)`` is the one entry point. It scores every conv of the network (stem,
block and downsample convs, as ``spa.adapters.network_convs``); an adapted conv is scored as the function it
computes (base + adapter), under the name of its ``SPLoRAConv2d`` wrapper, so fine-tuned, SPLoRA and merged
models share names. Scores are summed over the batches of one pass; ``normalize`` is the original research
code's ``--norm``. docs/METHOD.md defines the four criteria.

Unlike the original research code, ranking runs in eval mode (BatchNorm running statistics must not drift while
ranking) and every criterion sees the adapted weights (the original ignored the adapter when scoring SPLoRA
models).
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from zennit.composites import SpecialFirstLayerMapComposite
from zennit.core import BasicHook, Stabilizer
from zennit.layer import Sum
from zennit.rules import ClampMod, Epsilon, Norm, Pass, ZBox
from zennit.torchvision import ResNetCanonizer
from zennit.types import Activation, AvgPool, BatchNorm, Convolution

from spa.adapters import SPLoRAConv2d, merge, network_convs
from spa.validation import is_int

__all__ = ["Scores", "Batch", "Criterion", "CRITERIA", "score_channels", "normalize", "scored_convs"]

Scores = dict[str, torch.Tensor]
Batch = tuple[torch.Tensor, torch.Tensor]

# LRP constants of the original research code (from Yeom et al. 2021's code; docs/METHOD.md): z-box bounds are
# the ImageNet-normalised pixel range [(0 - 0.485) / 0.229, (1 - 0.406) / 0.225]; epsilon of the linear head's
# rule; stabiliser of the other rules.
ZBOX_LOW = -2.1179
ZBOX_HIGH = 2.64
LINEAR_EPSILON = 1e-6
STABILIZER = 1e-6


@dataclass(frozen=True)
class Criterion:
    """How to score (raw, un-normalised ``Scores``) and how ``--norm`` normalises those scores per layer."""

    score: Callable[[nn.Module, Iterable[Batch], torch.device], Scores]
    norm: Literal["l1", "l2"]

    def __call__(self, model: nn.Module, batches: Iterable[Batch], device: torch.device) -> Scores:
        return self.score(model, batches, device)


# Name -> module of every conv that gets scores: plain convs and ``SPLoRAConv2d`` wrappers (not their
# ``base_layer`` nor the ``lora_a``/``lora_b`` factor convs), in ``named_modules`` order.
scored_convs = network_convs


# ---------------------------------------------------------------------------------------------------- weight


def _following_batchnorm(model: nn.Module, name: str, out_channels: int) -> nn.BatchNorm2d | None:
    """The BatchNorm that directly follows conv ``name`` in a torchvision ResNet, found by its sibling name:
    ``conv1 -> bn1``, ``layerX.Y.convN -> layerX.Y.bnN``, ``downsample.0 -> downsample.1``; else ``None``."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    if child.startswith("conv") and child[4:].isdigit():
        bn_name = "bn" + child[4:]
    elif child.isdigit():  # inside an nn.Sequential such as downsample
        bn_name = str(int(child) + 1)
    else:
        return None
    bn = parent._modules.get(bn_name)
    if isinstance(bn, nn.BatchNorm2d) and bn.num_features == out_channels:
        return bn
    return None


def _weight_scores(model: nn.Module, batches: Iterable[Batch], device: torch.device) -> Scores:
    """sum |W_eff| over each filter, W_eff = adapted weight (base + centre-tap B @ A) times the following
    BatchNorm's scale gamma / sqrt(var + eps), as the original research code fuses BN before taking magnitudes.

    Fusing matters because a BN can rescale a channel arbitrarily: the bare conv weight's magnitude says nothing
    about the channel's output. The BN shift is left out (it is a bias, not a weight). Needs no data."""
    scores: Scores = {}
    with torch.no_grad():
        for name, conv in scored_convs(model).items():
            weight = conv.adapted_weight() if isinstance(conv, SPLoRAConv2d) else conv.weight  # (O, I, k, k)
            magnitude = weight.abs().sum(dim=(1, 2, 3))
            bn = _following_batchnorm(model, name, weight.shape[0])
            if bn is not None:
                gamma = bn.weight if bn.weight is not None else torch.ones_like(bn.running_var)
                magnitude = magnitude * (gamma / torch.sqrt(bn.running_var + bn.eps)).abs()
            scores[name] = magnitude.detach().float().cpu()
    return scores


# ----------------------------------------------------------------------------------------------- grad, taylor


def _outputs_and_gradients(
    model: nn.Module, convs: dict[str, nn.Module], inputs: torch.Tensor, targets: torch.Tensor
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Conv output Y and dL/dY of one batch, L = cross entropy summed over the batch (so dL/dY of a sample is
    its own loss's gradient, whatever the batch size). ``torch.autograd.grad`` leaves parameter ``.grad`` alone."""
    outputs: dict[str, torch.Tensor] = {}

    def keep(name: str) -> Callable[[nn.Module, tuple[torch.Tensor, ...], torch.Tensor], torch.Tensor]:
        def hook(module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
            outputs[name] = output
            # The network continues on a copy: a following in-place op (ReLU(inplace=True)) must not change Y.
            return output.clone()

        return hook

    handles = [conv.register_forward_hook(keep(name)) for name, conv in convs.items()]
    try:
        # An input that requires grad makes every conv output differentiable, even with all parameters frozen.
        logits = model(inputs.detach().requires_grad_(True))
    finally:
        for handle in handles:
            handle.remove()
    loss = F.cross_entropy(logits, targets, reduction="sum")
    names = list(outputs)
    grads = torch.autograd.grad(loss, [outputs[n] for n in names], allow_unused=True)
    return {
        n: (outputs[n].detach(), torch.zeros_like(outputs[n]) if g is None else g)
        for n, g in zip(names, grads, strict=True)
    }


def _accumulate_over_batches(
    reduce: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> Callable[[nn.Module, Iterable[Batch], torch.device], Scores]:
    """A data criterion from a per-batch reduction ``(Y, dL/dY) -> (C,)``, summed over batches."""

    def score(model: nn.Module, batches: Iterable[Batch], device: torch.device) -> Scores:
        convs = scored_convs(model)
        totals: Scores = {}
        seen = 0
        for inputs, targets in batches:
            seen += 1
            per_conv = _outputs_and_gradients(model, convs, inputs.to(device), targets.to(device))
            for name, (output, grad) in per_conv.items():
                value = reduce(output, grad).detach()
                totals[name] = totals[name] + value if name in totals else value
        return _complete(totals, convs, seen)

    return score


def _grad_reduce(output: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """grad (Sun et al., meProp): |mean over batch and positions of dL/dY| per channel."""
    return grad.mean(dim=(0, 2, 3)).abs()  # (B, C, H, W) -> (C,)


def _taylor_reduce(output: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """taylor (Molchanov et al. 2017): per sample the mean over positions of Y * dL/dY, its absolute value,
    summed over samples (the absolute value comes before summing samples, so opposite signs do not cancel)."""
    return (output * grad).mean(dim=(2, 3)).abs().sum(dim=0)  # (B, C, H, W) -> (B, C) -> (C,)


# -------------------------------------------------------------------------------------------------------- lrp


class NonNegativeZPlus(BasicHook):
    """alpha1-beta0 (z+) for layers whose inputs are non-negative, at one modified forward pass instead of two.

    zennit's ``ZPlus`` also propagates through the negative inputs with the negative weights; behind a ReLU (every
    ResNet conv but the stem, which gets the z-box rule) that half is identically zero, and it doubled the cost
    of LRP scoring. Negative inputs, should a layer receive any, are clamped away, which is what z+ assumes.
    """

    def __init__(self, stabilizer: float = 1e-6, zero_params: list[str] | None = None) -> None:
        stabilize = Stabilizer.ensure(stabilizer)
        super().__init__(
            input_modifiers=[lambda input: input.clamp(min=0)],
            param_modifiers=[ClampMod(min=0.0, zero_params=zero_params)],
            output_modifiers=[lambda output: output],
            gradient_mapper=(lambda out_grad, outputs: [out_grad / stabilize(outputs[0])]),
            reducer=(lambda inputs, gradients: inputs[0] * gradients[0]),
        )


def _lrp_composite() -> SpecialFirstLayerMapComposite:
    """The original research code's LRP rules as a zennit composite: first conv z-box; other convs alpha1-beta0
    with biases ignored (``NonNegativeZPlus``: AlphaBeta(1, 0) for post-ReLU inputs, at a quarter of its cost); the
    linear head epsilon; residual sum and average pooling split relevance in proportion to their inputs; ReLU and the
    (canonizer-neutralised) BatchNorm pass relevance through. ``ResNetCanonizer`` fuses each BN into its conv
    and routes the residual add through a ``Sum`` module; max-pooling keeps the plain gradient (winner takes all).
    """
    layer_map = [
        (Activation, Pass()),
        (Sum, Norm(stabilizer=STABILIZER)),
        (AvgPool, Norm(stabilizer=STABILIZER)),
        (BatchNorm, Pass()),
        (Convolution, NonNegativeZPlus(stabilizer=STABILIZER, zero_params=["bias"])),
        (nn.Linear, Epsilon(epsilon=LINEAR_EPSILON)),
    ]
    first_map = [(Convolution, ZBox(low=ZBOX_LOW, high=ZBOX_HIGH, stabilizer=STABILIZER))]
    return SpecialFirstLayerMapComposite(layer_map=layer_map, first_map=first_map, canonizers=[ResNetCanonizer()])


def _prepared_for_lrp(model: nn.Module) -> nn.Module:
    """A merged, frozen, eval-mode copy: zennit's rules need plain convs, and the canonizer edits weights."""
    lrp_model = merge(copy.deepcopy(model))
    lrp_model.eval()
    lrp_model.requires_grad_(False)
    return lrp_model


def _lrp_batch(
    model: nn.Module, convs: dict[str, nn.Module], inputs: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, Scores]:
    """One batch through ``model`` already under the LRP composite: the input relevance (B, C, H, W) and, per
    conv, sum over samples and positions of |relevance| at its (BN-fused) output.

    Relevance starts as 1 at each sample's ground-truth logit (a one-hot output gradient). In zennit the
    gradient reaching a tensor between rule-hooked layers is its relevance, so a tensor hook on the conv output
    reads it; the hook is registered during the forward, i.e. after the canonizer has fused BN into the conv."""
    sums: Scores = {}

    def read(name: str) -> Callable[[nn.Module, tuple[torch.Tensor, ...], torch.Tensor], None]:
        def add(relevance: torch.Tensor) -> None:
            sums[name] = relevance.detach().abs().sum(dim=(0, 2, 3))

        def hook(module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            output.register_hook(add)

        return hook

    handles = [conv.register_forward_hook(read(name)) for name, conv in convs.items()]
    try:
        inputs = inputs.detach().requires_grad_(True)  # the first layer's rule hooks only inputs needing grad
        logits = model(inputs)
        start = F.one_hot(targets, logits.shape[1]).to(logits.dtype)
        (input_relevance,) = torch.autograd.grad(logits, inputs, grad_outputs=start)
    finally:
        for handle in handles:
            handle.remove()
    return input_relevance.detach(), sums


def _lrp_scores(model: nn.Module, batches: Iterable[Batch], device: torch.device) -> Scores:
    """lrp (Yeom et al. 2021): sum over samples and positions of |relevance| at each conv output, computed with
    zennit on a merged copy (the original model is untouched)."""
    lrp_model = _prepared_for_lrp(model)
    convs = scored_convs(lrp_model)
    totals: Scores = {}
    seen = 0
    with _lrp_composite().context(lrp_model):
        for inputs, targets in batches:
            seen += 1
            _, sums = _lrp_batch(lrp_model, convs, inputs.to(device), targets.to(device))
            for name, value in sums.items():
                totals[name] = totals[name] + value if name in totals else value
    return _complete(totals, convs, seen)


# ------------------------------------------------------------------------------------------------- public API


def _complete(totals: Scores, convs: dict[str, nn.Module], batches_seen: int) -> Scores:
    """Every conv gets scores (zero where no signal reached it), cpu float32, in ``named_modules`` order."""
    if batches_seen == 0:
        raise ValueError("the loader yielded no batches; data criteria need at least one")
    return {
        name: totals[name].float().cpu() if name in totals else torch.zeros(conv.out_channels)
        for name, conv in convs.items()
    }


# Keyed by ``spa.config.CRITERIA_NAMES``, the vocabulary's one home (torch-free, for flags and search spaces);
# tests/spa/test_criteria.py checks that the keys are exactly those names.
CRITERIA: dict[str, Criterion] = {
    "weight": Criterion(score=_weight_scores, norm="l1"),
    "grad": Criterion(score=_accumulate_over_batches(_grad_reduce), norm="l2"),
    "taylor": Criterion(score=_accumulate_over_batches(_taylor_reduce), norm="l2"),
    "lrp": Criterion(score=_lrp_scores, norm="l1"),
}


def _criterion(name: str) -> Criterion:
    if name not in CRITERIA:
        raise ValueError(f"unknown criterion {name!r}; allowed: {', '.join(CRITERIA)}")
    return CRITERIA[name]


@contextmanager
def _ranking_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode while ranking; afterwards every module's train/eval flag and every ``requires_grad`` as before."""
    training = {module: module.training for module in model.modules()}
    requires_grad = {param: param.requires_grad for param in model.parameters()}
    try:
        model.eval()
        with torch.enable_grad():
            yield
    finally:
        for module, flag in training.items():
            module.training = flag
        for param, flag in requires_grad.items():
            param.requires_grad_(flag)


def score_channels(
    model: nn.Module,
    loader: Iterable[Batch],
    criterion: str,
    *,
    norm: bool = True,
    device: torch.device | str = "cpu",
    max_batches: int | None = None,
) -> Scores:
    """Score every output channel of every conv of ``model`` (already on ``device``) with ``criterion``.

    Data criteria make one pass over ``loader`` (or its first ``max_batches``) and sum over batches; ``weight``
    reads no data. ``norm`` applies ``normalize`` (the original code's ``--norm``). Returns name -> (C,) cpu float32.
    """
    chosen = _criterion(criterion)
    if max_batches is not None and not (is_int(max_batches) and max_batches >= 1):
        raise ValueError(f"max_batches must be None or an integer >= 1, got {max_batches!r}")
    batches = loader if max_batches is None else itertools.islice(loader, max_batches)
    with _ranking_mode(model):
        scores = chosen(model, batches, torch.device(device))
    return normalize(scores, criterion) if norm else scores


def normalize(scores: Scores, criterion: str) -> Scores:
    """Per-layer normalisation before a global ranking, so layers with large raw scores do not dominate:
    L1 (v / sum v) for weight and lrp, L2 (|v| / ||v||_2) for grad and taylor. An all-zero layer stays zero."""
    kind = _criterion(criterion).norm
    normalized: Scores = {}
    for name, values in scores.items():
        magnitude = values.abs()
        total = magnitude.sum() if kind == "l1" else torch.linalg.vector_norm(magnitude)
        normalized[name] = magnitude / total if total > 0 else torch.zeros_like(magnitude)
    return normalized
