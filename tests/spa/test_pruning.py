"""Physical pruning checked against an independent reference: the unpruned network with the removed channels'
activations forced to zero. Removed channels are identified without the code under test: every BatchNorm gets
distinct random running means, and the surviving means say which channels survived."""

from __future__ import annotations

import copy
import functools
import math
import subprocess
import sys

import pytest
import torch
from torch import nn

from spa.adapters import SPLoRAConv2d, add_splora
from spa.counting import conv_channels
from spa.models import build_resnet
from spa.pruning import (
    ChannelGroup,
    channel_groups,
    fewest_channels,
    network_conv_names,
    prune_to_channels,
    prune_to_density,
)

RESNET18_GROUPS = [
    ("conv1", "layer1.0.conv2", "layer1.1.conv2"),
    ("layer1.0.conv1",),
    ("layer1.1.conv1",),
    ("layer2.0.conv1",),
    ("layer2.0.conv2", "layer2.0.downsample.0", "layer2.1.conv2"),
    ("layer2.1.conv1",),
    ("layer3.0.conv1",),
    ("layer3.0.conv2", "layer3.0.downsample.0", "layer3.1.conv2"),
    ("layer3.1.conv1",),
    ("layer4.0.conv1",),
    ("layer4.0.conv2", "layer4.0.downsample.0", "layer4.1.conv2"),
    ("layer4.1.conv1",),
]
RESNET18_SIZES = [64, 64, 64, 128, 128, 128, 256, 256, 256, 512, 512, 512]


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: with two OpenMP threads on a shared 2-core machine, every op can wait out a time slice
    (100x slower under load, measured); one thread is as fast when idle and stable when not."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _example() -> torch.Tensor:
    # The graph does not depend on the spatial size; a small input traces faster.
    return torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def _model(arch: str, learner: str) -> nn.Module:
    return copy.deepcopy(_cached_model(arch, learner))


@functools.cache
def _cached_model(arch: str, learner: str) -> nn.Module:
    """A random ResNet whose BatchNorms have distinct, non-trivial running statistics and affine parameters."""
    torch.manual_seed(0)
    model = build_resnet(arch, 10, cifar_stem=True)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n) * 0.1)
                module.running_var.copy_(torch.rand(n) + 0.5)
                module.weight.copy_(torch.rand(n) + 0.5)
                module.bias.copy_(torch.randn(n) * 0.1)
    if learner == "splora":
        add_splora(model, 4, 0.1)  # a large init range so the adapters change the logits
    return model


def _random_scores(model: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        name: torch.rand(conv.out_channels, generator=generator) for name, conv in network_conv_names(model).items()
    }


def _bn_after(conv_name: str) -> str:
    """The BatchNorm that normalises a torchvision ResNet conv's output."""
    prefix, _, last = conv_name.rpartition(".")
    if last == "0":  # downsample.0 -> downsample.1
        return f"{prefix}.1"
    bn = last.replace("conv", "bn")
    return f"{prefix}.{bn}" if prefix else bn


def _removed_channels(original: nn.Module, pruned: nn.Module) -> dict[str, list[int]]:
    removed = {}
    for name, conv in network_conv_names(original).items():
        before = original.get_submodule(_bn_after(name)).running_mean
        after = pruned.get_submodule(_bn_after(name)).running_mean
        kept = [int((before == value).nonzero().item()) for value in after]
        assert kept == sorted(kept), f"{name}: surviving channels were reordered"
        removed[name] = sorted(set(range(conv.out_channels)) - set(kept))
    return removed


def _masked_logits(original: nn.Module, removed: dict[str, list[int]], x: torch.Tensor) -> torch.Tensor:
    reference = copy.deepcopy(original).eval()

    def zero(channels: list[int]):
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
            output = output.clone()
            output[:, channels] = 0  # after BN: the channel's activation is 0, as if the channel were not there
            return output

        return hook

    for name, channels in removed.items():
        if channels:
            reference.get_submodule(_bn_after(name)).register_forward_hook(zero(channels))
    with torch.no_grad():
        return reference(x)


@pytest.mark.parametrize(
    ("arch", "learner"),
    [("resnet18", "finetune"), ("resnet18", "splora"), ("resnet50", "finetune"), ("resnet50", "splora")],
)
def test_pruned_model_equals_masked_model(arch: str, learner: str) -> None:
    original = _model(arch, learner).eval()
    pruned = copy.deepcopy(original).train()  # train mode: the trace must not update running statistics
    reference_channels = conv_channels(original)
    scores = _random_scores(original, seed=2)
    groups = channel_groups(original, _example())

    removed_count = prune_to_density(pruned, scores, 0.5, reference_channels, _example(), min_channels=1)

    assert pruned.training
    assert removed_count == reference_channels - conv_channels(pruned)
    assert round(0.5 * reference_channels) - max(g.cost for g in groups) < conv_channels(pruned)
    assert conv_channels(pruned) <= round(0.5 * reference_channels)
    removed = _removed_channels(original, pruned)
    assert sum(map(len, removed.values())) == removed_count
    for group in groups:  # a coupled channel goes from every member or from none
        assert all(removed[m] == removed[group.members[0]] for m in group.members), group
    # Lowest coupled scores go first: no kept channel (of a group that could still lose one) scores below a removed one.
    removed_scores, kept_scores = [], []
    for group in groups:
        mean = torch.stack([scores[m] for m in group.members]).mean(0)
        gone = removed[group.members[0]]
        removed_scores += mean[gone].tolist()
        if group.size - len(gone) > 1:
            kept_scores += [float(mean[c]) for c in range(group.size) if c not in gone]
    assert removed_scores and max(removed_scores) <= min(kept_scores)

    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    expected = _masked_logits(original, removed, x)
    with torch.no_grad():
        unpruned = original(x)
        actual = pruned.eval()(x)
    scale = expected.abs().max()
    assert (unpruned - expected).abs().max() > 1e-2 * scale  # the removed channels did matter
    assert (actual - expected).abs().max() <= 1e-4 * scale


def test_channel_groups_resnet18_exact() -> None:
    groups = channel_groups(_model("resnet18", "finetune"), _example())
    assert [g.members for g in groups] == RESNET18_GROUPS
    assert [g.size for g in groups] == RESNET18_SIZES
    # Adapted convs are named by their wrapper, and the adapter adds no group or member.
    adapted = channel_groups(_model("resnet18", "splora"), _example())
    assert adapted == [ChannelGroup(m, s) for m, s in zip(RESNET18_GROUPS, RESNET18_SIZES, strict=True)]


def test_channel_groups_resnet50_residual_streams() -> None:
    model = _model("resnet50", "finetune")
    groups = channel_groups(model, _example())
    coupled = [g.members for g in groups if g.cost > 1]

    def stage(layer: str, blocks: int) -> tuple[str, ...]:
        return (f"{layer}.0.conv3", f"{layer}.0.downsample.0", *(f"{layer}.{b}.conv3" for b in range(1, blocks)))

    # Bottleneck layer1 has a downsample (64 -> 256), so the stem is not on layer1's residual stream.
    assert coupled == [stage("layer1", 3), stage("layer2", 4), stage("layer3", 6), stage("layer4", 3)]
    assert len(groups) == 1 + 4 + 2 * 16
    assert sorted(m for g in groups for m in g.members) == sorted(network_conv_names(model))


def test_splora_adapters_shrink_with_their_conv_and_keep_rank_and_flags() -> None:
    model = _model("resnet18", "splora")
    trainable_before = {n for n, p in model.named_parameters() if p.requires_grad}
    out_before = {n: m.out_channels for n, m in model.named_modules() if isinstance(m, SPLoRAConv2d)}
    prune_to_density(model, _random_scores(model, seed=4), 0.4, conv_channels(model), _example(), min_channels=1)

    adapters = [m for m in model.modules() if isinstance(m, SPLoRAConv2d)]
    assert len(adapters) == 20
    out_after = {n: m.out_channels for n, m in model.named_modules() if isinstance(m, SPLoRAConv2d)}
    assert all(out_after[n] < out_before[n] for n in out_before)  # random scores at 40%: every conv loses some
    for adapter in adapters:
        base = adapter.base_layer
        assert adapter.lora_a.weight.shape == (4, base.in_channels, 1, 1)
        assert adapter.lora_b.weight.shape == (base.out_channels, 4, 1, 1)
        assert adapter.lora_a.in_channels == base.in_channels == base.weight.shape[1]
        assert adapter.lora_b.out_channels == base.out_channels == base.weight.shape[0]
        assert adapter.rank == 4 and adapter.lora_b.in_channels == 4
        assert not base.weight.requires_grad
    assert conv_channels(model) <= round(0.4 * 4800)
    assert model.layer4[1].bn2.num_features == model.fc.in_features == model.layer4[1].conv2.out_channels < 512
    assert model.fc.out_features == 10
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == trainable_before
    assert all(".lora_" in n or "bn" in n or "downsample.1" in n or n.startswith("fc.") for n in trainable)


def test_adapted_head_loses_input_features_but_keeps_its_rank_and_outputs() -> None:
    model = _model("resnet18", "finetune")
    add_splora(model, 4, 0.1, target=lambda name, module: isinstance(module, (nn.Conv2d, nn.Linear)))
    prune_to_density(model, _random_scores(model, seed=9), 0.5, conv_channels(model), _example(), min_channels=1)
    head = model.fc
    assert head.base_layer.in_features == head.lora_a.in_features == model.layer4[1].conv2.out_channels < 512
    assert head.rank == 4 and head.lora_b.out_features == head.base_layer.out_features == 10
    assert not head.base_layer.weight.requires_grad and head.base_layer.bias.requires_grad
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 10)


def test_frozen_parameter_of_a_plain_conv_stays_frozen() -> None:
    model = _model("resnet18", "finetune")
    model.conv1.weight.requires_grad_(False)
    prune_to_density(model, _random_scores(model, seed=5), 0.5, conv_channels(model), _example(), min_channels=1)
    assert model.conv1.out_channels < 64
    assert not model.conv1.weight.requires_grad
    assert all(p.requires_grad for n, p in model.named_parameters() if n != "conv1.weight")


@pytest.mark.parametrize("learner", ["finetune", "splora"])
def test_training_after_pruning_cannot_revive_channels(learner: str) -> None:
    model = _model("resnet18", learner)
    prune_to_density(model, _random_scores(model, seed=6), 0.5, conv_channels(model), _example(), min_channels=1)
    shapes = {n: p.shape for n, p in model.named_parameters()}
    channels = conv_channels(model)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    model.train()
    loss = nn.functional.cross_entropy(model(torch.randn(2, 3, 16, 16)), torch.tensor([1, 7]))
    loss.backward()
    optimizer.step()
    assert {n: p.shape for n, p in model.named_parameters()} == shapes
    assert conv_channels(model) == channels


@pytest.fixture()
def resnet18() -> nn.Module:
    return _model("resnet18", "finetune")


@pytest.mark.parametrize("target", [4790, 4000, 2400, 777, 20, 4800, 9999])
def test_target_reached_within_one_group(resnet18: nn.Module, target: int) -> None:
    model = resnet18
    before = conv_channels(model)
    removed = prune_to_channels(model, _random_scores(model, seed=7), target, _example(), min_channels=1)
    after = conv_channels(model)
    assert removed == before - after
    if target >= before:
        assert removed == 0
    else:
        assert target - 3 < after <= target  # 3: the largest resnet18 group's cost
    if target == 20:  # the minimum: one channel left in each of the 12 groups
        assert all(g.size == 1 for g in channel_groups(model, _example()))


def _layer4_lowest_scores(model: nn.Module) -> dict[str, torch.Tensor]:
    """Random scores in [1, 2), except every layer4 conv's in [0, 0.001): a deep cut empties layer4 first."""
    scores = _random_scores(model, seed=11)
    return {name: s * 0.001 if name.startswith("layer4") else 1 + s for name, s in scores.items()}


@pytest.mark.parametrize("min_channels", [1, 8])
def test_min_channels_is_the_floor_of_every_conv(resnet18: nn.Module, min_channels: int) -> None:
    # By hand: layer4 holds 5 convs of 512 (conv1 x2, and conv2 x2 + downsample tied), the other 15 convs 2,240
    # channels. Down to 8 each, layer4 gives up 5 * 504 = 2,520 of 4,800; the last 10 must then come from the other
    # layers (within one residual group's cost of 3). Without a floor layer4 alone gives up all 2,530.
    model = resnet18
    target = 4800 - 5 * 504 - 10
    prune_to_channels(model, _layer4_lowest_scores(model), target, _example(), min_channels=min_channels)
    widths = {name: conv.out_channels for name, conv in network_conv_names(model).items()}
    layer4 = {width for name, width in widths.items() if name.startswith("layer4")}
    assert target - 3 < conv_channels(model) <= target
    if min_channels == 8:
        assert layer4 == {8}
        assert 2240 - 10 - 2 <= sum(w for n, w in widths.items() if not n.startswith("layer4")) <= 2240 - 10
    else:
        assert min(layer4) < 8 and sum(w for n, w in widths.items() if not n.startswith("layer4")) == 2240
    assert min(widths.values()) >= min_channels


def test_fewest_channels_counts_the_floor_by_hand(resnet18: nn.Module) -> None:
    # 20 convs, each at least 64 wide: min_channels per conv, or the conv's own width where that is smaller.
    assert fewest_channels(resnet18, 8) == 20 * 8
    assert fewest_channels(resnet18, 1) == 20
    assert fewest_channels(resnet18, 100) == 5 * 64 + 15 * 100  # the stem and layer1 are 64 wide
    assert fewest_channels(resnet18, 512) == 4800
    with pytest.raises(ValueError, match=r"target_channels=159 is not allowed; allowed: >= 160 \(min_channels=8"):
        prune_to_channels(resnet18, _random_scores(resnet18, 0), 159, _example(), min_channels=8)
    assert conv_channels(resnet18) == 4800


def test_iterative_pruning_follows_a_schedule(resnet18: nn.Module) -> None:
    model = resnet18
    reference = conv_channels(model)
    for density in (0.8, 0.5, 0.3):
        removed = prune_to_density(
            model, _random_scores(model, seed=int(density * 10)), density, reference, _example(), min_channels=1
        )
        assert removed > 0
        assert math.isclose(conv_channels(model) / reference, density, abs_tol=3 / reference)


def _scores_with(model: nn.Module, name: str, value: object) -> dict[str, object]:
    scores: dict[str, object] = dict(_random_scores(model, seed=8))
    if value is None:
        del scores[name]
    else:
        scores[name] = value
    return scores


@pytest.mark.parametrize(
    ("call", "needle"),
    [
        (lambda m: prune_to_density(m, _random_scores(m, 0), 0.0, 4800, _example(), min_channels=1), "density=0.0"),
        (lambda m: prune_to_density(m, _random_scores(m, 0), 1.5, 4800, _example(), min_channels=1), "density=1.5"),
        (
            lambda m: prune_to_density(m, _random_scores(m, 0), math.nan, 4800, _example(), min_channels=1),
            "density=nan",
        ),
        (lambda m: prune_to_density(m, _random_scores(m, 0), True, 4800, _example(), min_channels=1), "density=True"),
        (
            lambda m: prune_to_density(m, _random_scores(m, 0), 0.5, 0, _example(), min_channels=1),
            "reference_channels=0",
        ),
        (
            lambda m: prune_to_density(m, _random_scores(m, 0), 0.001, 4800, _example(), min_channels=1),
            "target_channels=5",
        ),
        (lambda m: prune_to_channels(m, _random_scores(m, 0), 19, _example(), min_channels=1), "target_channels=19"),
        (
            lambda m: prune_to_channels(m, _random_scores(m, 0), 100.0, _example(), min_channels=1),
            "target_channels=100.0",
        ),
        (lambda m: prune_to_channels(m, _random_scores(m, 0), 100, _example(), min_channels=0), "min_channels=0"),
        (lambda m: prune_to_channels(m, _random_scores(m, 0), 100, _example(), min_channels=True), "min_channels=True"),
        (
            lambda m: prune_to_channels(m, _scores_with(m, "layer1.0.conv1", None), 100, _example(), min_channels=1),
            "layer1.0.conv1",
        ),
        (
            lambda m: prune_to_channels(
                m, _scores_with(m, "layer1.0.conv1.base_layer", torch.ones(64)), 100, _example(), min_channels=1
            ),
            "layer1.0.conv1.base_layer",
        ),
        (
            lambda m: prune_to_channels(m, _scores_with(m, "conv1", torch.ones(63)), 100, _example(), min_channels=1),
            "(63,)",
        ),
        (
            lambda m: prune_to_channels(
                m, _scores_with(m, "conv1", torch.ones(64, 1)), 100, _example(), min_channels=1
            ),
            "(64, 1)",
        ),
        (lambda m: prune_to_channels(m, _scores_with(m, "conv1", [1.0] * 64), 100, _example(), min_channels=1), "list"),
        (
            lambda m: prune_to_channels(
                m, _scores_with(m, "conv1", torch.full((64,), math.nan)), 100, _example(), min_channels=1
            ),
            "non-finite",
        ),
    ],
)
def test_bad_input_is_one_line_value_error(resnet18: nn.Module, call, needle: str) -> None:
    model = resnet18
    with pytest.raises(ValueError) as error:
        call(model)
    message = str(error.value)
    assert needle in message and "allowed" in message and "\n" not in message
    assert conv_channels(model) == 4800  # nothing was pruned


def test_spa_pruning_imports_no_study_tooling() -> None:
    code = "import sys, spa.pruning, spa.schedules; print(sorted({'ray', 'mlflow', 'optuna'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
