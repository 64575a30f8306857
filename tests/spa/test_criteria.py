"""spa.criteria against independent references: hand formulas, plain autograd, relevance conservation."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from spa import criteria
from spa.adapters import SPLoRAConv2d, add_splora, merge
from spa.config import CRITERIA_NAMES
from spa.counting import network_convs
from spa.criteria import CRITERIA, normalize, score_channels
from spa.models import build_resnet

NUM_CLASSES = 10


def _batches(count: int, size: int = 4, seed: int = 0, channels: int = 3, pixels: int = 32):
    generator = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(size, channels, pixels, pixels, generator=generator).clamp(
                criteria.ZBOX_LOW, criteria.ZBOX_HIGH
            ),
            torch.randint(0, NUM_CLASSES, (size,), generator=generator),
        )
        for _ in range(count)
    ]


def _calibrated_resnet18(*, cifar_stem: bool = False, seed: int = 0) -> nn.Module:
    """Random resnet18 whose BN running statistics fit random inputs (so eval-mode activations stay sane), and
    whose BN affine parameters are not the identity (so BN fusion matters)."""
    torch.manual_seed(seed)
    model = build_resnet("resnet18", NUM_CLASSES, cifar_stem=cifar_stem)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = None  # cumulative average over the calibration pass
            nn.init.uniform_(module.weight, 0.5, 1.5)
            nn.init.uniform_(module.bias, -0.1, 0.1)
    model.train()
    with torch.no_grad():
        model(_batches(1, size=16, seed=seed + 100)[0][0])
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = 0.1
    return model


def _splora_resnet18() -> nn.Module:
    model = add_splora(_calibrated_resnet18(), rank=4, init_range=1e-4)
    torch.manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, SPLoRAConv2d):
                module.lora_b.weight.normal_(0.0, 0.05)  # a trained-looking, clearly nonzero B
    return model


def _model_state(model: nn.Module) -> dict[str, object]:
    return {
        "tensors": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "training": {name: m.training for name, m in model.named_modules()},
        "requires_grad": {name: p.requires_grad for name, p in model.named_parameters()},
    }


# ---------------------------------------------------------------------------- all criteria on a SPLoRA resnet18


@pytest.fixture(scope="module")
def ranked_splora() -> tuple[dict[str, object], dict[str, object], dict[str, dict], nn.Module]:
    """Every criterion once on a SPLoRA resnet18 in train mode with one BN frozen (eval): states and scores."""
    model = _splora_resnet18()
    model.train()
    model.layer1[0].bn1.eval()  # a per-module mode that a blanket model.train() would lose
    before = _model_state(model)
    raw, normed, after = {}, {}, {}
    loader = _batches(2, size=2)
    for name in CRITERIA:
        raw[name] = score_channels(model, loader, name, norm=False)
        normed[name] = normalize(raw[name], name)
        after[name] = _model_state(model)
        after[name]["grads"] = [n for n, p in model.named_parameters() if p.grad is not None]
    return before, after, {"raw": raw, "normed": normed}, model


def test_registry_matches_config() -> None:
    assert tuple(CRITERIA) == CRITERIA_NAMES


@pytest.mark.parametrize("criterion", CRITERIA_NAMES)
def test_every_conv_scored_finite_and_non_negative(ranked_splora, criterion: str) -> None:
    _, _, scores, model = ranked_splora
    raw, normed = scores["raw"][criterion], scores["normed"][criterion]
    modules = dict(model.named_modules())
    # Names are the wrappers', one per network conv (stem, block and downsample convs), no factor convs.
    assert len(raw) == len(network_convs(model)) == 20
    assert {"conv1", "layer1.0.conv1", "layer2.0.downsample.0", "layer4.1.conv2"} <= set(raw)
    assert not any(name.endswith(("base_layer", "lora_a", "lora_b")) for name in raw)
    for name, values in raw.items():
        assert isinstance(modules[name], SPLoRAConv2d)
        assert values.shape == (modules[name].out_channels,) and values.dtype == torch.float32
        assert values.device.type == "cpu"
        assert torch.isfinite(values).all() and (values >= 0).all() and values.sum() > 0
        total = normed[name].sum() if CRITERIA[criterion].norm == "l1" else normed[name].norm()
        assert total.item() == pytest.approx(1.0, rel=1e-5)


@pytest.mark.parametrize("criterion", CRITERIA_NAMES)
def test_ranking_leaves_model_as_it_was(ranked_splora, criterion: str) -> None:
    before, after, _, _ = ranked_splora
    state = after[criterion]
    # BN running statistics (and num_batches_tracked) did not move; nothing else changed either.
    for key, value in before["tensors"].items():
        assert torch.equal(value, state["tensors"][key]), key
    assert state["training"] == before["training"]
    assert before["training"][""] is True and before["training"]["layer1.0.bn1"] is False
    assert state["requires_grad"] == before["requires_grad"]
    assert state["grads"] == []


# ------------------------------------------------------------------------------------------------------- weight


def test_weight_is_bn_fused_filter_magnitude() -> None:
    model = _calibrated_resnet18()
    scores = score_channels(model, [], "weight", norm=False)
    for conv_name, bn_name in [
        ("conv1", "bn1"),
        ("layer1.0.conv2", "layer1.0.bn2"),
        ("layer2.0.downsample.0", "layer2.0.downsample.1"),
    ]:
        conv, bn = model.get_submodule(conv_name), model.get_submodule(bn_name)
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        expected = torch.stack([(conv.weight[o] * scale[o]).abs().sum() for o in range(conv.out_channels)])
        torch.testing.assert_close(scores[conv_name], expected.detach(), rtol=1e-5, atol=0)
    # In a Sequential: conv "0" is fused with BN "1"; conv "2" has no BN after it and keeps its bare weight.
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1), nn.Flatten())
    nn.init.uniform_(net[1].weight, -2.0, 2.0)  # a negative gamma must count by magnitude
    net[1].running_var.uniform_(0.5, 2.0)
    scores = score_channels(net, [], "weight", norm=False)
    scale = (net[1].weight / torch.sqrt(net[1].running_var + net[1].eps)).abs()
    torch.testing.assert_close(scores["0"], (net[0].weight.abs().sum((1, 2, 3)) * scale).detach())
    torch.testing.assert_close(scores["2"], net[2].weight.abs().sum((1, 2, 3)).detach())


def test_weight_sees_the_adapter() -> None:
    model = _splora_resnet18()
    wrapper = model.layer1[0].conv1
    bn = model.layer1[0].bn1
    scores = score_channels(model, [], "weight", norm=False)["layer1.0.conv1"]
    scale = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).abs().detach()
    base = wrapper.base_layer.weight.detach()  # (64, 64, 3, 3)
    b, a = wrapper.lora_b.weight.detach()[:, :, 0, 0], wrapper.lora_a.weight.detach()[:, :, 0, 0]
    adapted = base.clone()
    adapted[:, :, 1, 1] += torch.einsum("or,ri->oi", b, a)  # centre tap of the 3x3 kernel
    expected = adapted.abs().sum((1, 2, 3)) * scale
    base_only = base.abs().sum((1, 2, 3)) * scale
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=0)
    assert (scores - base_only).abs().max() > 1e-3 * base_only.max()


# -------------------------------------------------------------------------------------------------- grad, taylor


def _tiny_network() -> nn.Sequential:
    torch.manual_seed(0)
    # In-place ReLUs right after the convs: scoring must still see each conv's own output.
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(4, 5, 3, padding=1, stride=2),
        nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(5, NUM_CLASSES),
    )


def _autograd_reference(net: nn.Sequential, loader, criterion: str) -> dict[str, torch.Tensor]:
    """Plain autograd on retain_grad'd conv outputs of a hand-written forward; loss = summed cross entropy."""
    totals = {"0": torch.zeros(4), "2": torch.zeros(5)}
    for inputs, targets in loader:
        y0 = F.conv2d(inputs, net[0].weight, net[0].bias, padding=1)
        y2 = F.conv2d(F.relu(y0), net[2].weight, net[2].bias, padding=1, stride=2)
        logits = F.linear(F.relu(y2).mean(dim=(2, 3)), net[6].weight, net[6].bias)
        y0.retain_grad()
        y2.retain_grad()
        F.cross_entropy(logits, targets, reduction="sum").backward()
        for name, y in (("0", y0), ("2", y2)):
            for c in range(y.shape[1]):
                if criterion == "grad":  # |mean over batch and positions of dL/dY|
                    totals[name][c] += y.grad[:, c].mean().abs()
                else:  # sum over samples of |mean over positions of Y * dL/dY|
                    totals[name][c] += sum((y[n, c] * y.grad[n, c]).mean().abs() for n in range(y.shape[0]))
    return {k: v.detach() for k, v in totals.items()}


@pytest.mark.parametrize("criterion", ["grad", "taylor"])
def test_grad_and_taylor_match_plain_autograd(criterion: str) -> None:
    net = _tiny_network()
    loader = _batches(2, size=3, pixels=6) + _batches(1, size=2, seed=1, pixels=6)  # batches of unequal size
    expected = _autograd_reference(net, loader, criterion)
    got = score_channels(net, loader, criterion, norm=False)
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-7)
    normed = score_channels(net, loader, criterion)
    for name in expected:
        torch.testing.assert_close(normed[name], expected[name] / expected[name].norm(), rtol=1e-5, atol=1e-7)
    # max_batches: the first batch only.
    first = score_channels(net, loader, criterion, norm=False, max_batches=1)
    torch.testing.assert_close(first["2"], _autograd_reference(net, loader[:1], criterion)["2"], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("criterion", ["grad", "taylor", "lrp"])
def test_adapted_model_scores_like_its_merged_twin(criterion: str) -> None:
    """Same function, same scores: the adapter path counts (for lrp the copy is merged before zennit sees it,
    else the canonizer would fuse BN into lora_b, the leaf just before it)."""
    model = _splora_resnet18().double().eval()
    twin = merge(copy.deepcopy(model))
    loader = [(x.double(), y) for x, y in _batches(1, size=2, pixels=16)]
    adapted = score_channels(model, loader, criterion, norm=False)
    merged = score_channels(twin, loader, criterion, norm=False)
    assert adapted.keys() == merged.keys() and len(adapted) == 20
    for name in adapted:
        torch.testing.assert_close(adapted[name], merged[name], rtol=1e-5, atol=1e-5 * merged[name].abs().max())


# ------------------------------------------------------------------------------------------------------------ lrp


def _stabilized(value: float) -> float:
    """zennit's stabilizer: push away from 0 by 1e-6, with sign(0) = +1."""
    return value + (1e-6 if value >= 0 else -1e-6)


def test_lrp_matches_hand_formulas() -> None:
    """conv_a(+BN, fused) -> relu -> conv_b -> relu -> avgpool -> linear, relevance by explicit LRP formulas:
    z-box at conv_a's input, alpha1-beta0 without bias at conv_b, proportional split at the pooling, epsilon at the
    head, starting from 1 at the target logit."""
    torch.manual_seed(3)
    net = nn.Sequential(
        nn.Conv2d(3, 2, 1), nn.BatchNorm2d(2), nn.ReLU(), nn.Conv2d(2, 2, 1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 3),
    ).double()  # fmt: skip
    with torch.no_grad():
        net[0].bias.uniform_(0.2, 0.5)
        net[1].running_mean.uniform_(-0.3, 0.3)
        net[1].running_var.uniform_(0.5, 2.0)
        net[1].weight.uniform_(0.5, 2.0)
        net[1].bias.uniform_(0.1, 0.4)
        net[3].bias.uniform_(0.1, 0.3)
    inputs = torch.rand(2, 3, 2, 2, dtype=torch.float64) * 2 - 1
    targets = torch.tensor([0, 2])
    low, high = criteria.ZBOX_LOW, criteria.ZBOX_HIGH

    bn = net[1]
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    wa = (net[0].weight[:, :, 0, 0] * scale[:, None]).tolist()  # BN fused into conv_a
    ba = ((net[0].bias - bn.running_mean) * scale + bn.bias).tolist()
    wb, bb = net[3].weight[:, :, 0, 0].tolist(), net[3].bias.tolist()
    wl, bl = net[7].weight.tolist(), net[7].bias.tolist()
    score_a, score_b = [0.0, 0.0], [0.0, 0.0]
    input_relevance = torch.zeros_like(inputs)
    positions = [(i, j) for i in range(2) for j in range(2)]
    for n, t in enumerate(targets.tolist()):
        x = {p: inputs[n, :, p[0], p[1]].tolist() for p in positions}
        za = {p: [sum(wa[o][c] * x[p][c] for c in range(3)) + ba[o] for o in range(2)] for p in positions}
        # zennit's canonizer leaves the fused BN as x / sqrt(1 + eps), not exactly the identity.
        a = {p: [max(v, 0.0) / (1 + bn.eps) ** 0.5 for v in za[p]] for p in positions}
        h = {p: [max(sum(wb[o][i] * a[p][i] for i in range(2)) + bb[o], 0.0) for o in range(2)] for p in positions}
        pooled = [sum(h[p][j] for p in positions) / 4 for j in range(2)]
        logit_t = sum(wl[t][j] * pooled[j] for j in range(2)) + bl[t]
        r_pooled = [pooled[j] * wl[t][j] / _stabilized(logit_t) for j in range(2)]  # epsilon rule, R_t = 1
        for p in positions:
            r_b = [h[p][o] / (4 * _stabilized(pooled[o])) * r_pooled[o] for o in range(2)]  # pooling split
            # alpha1-beta0, bias ignored: the positive part of each input's contribution, x+ w+ + x- w-.
            positive = [[max(a[p][i], 0) * max(wb[o][i], 0) + min(a[p][i], 0) * min(wb[o][i], 0) for i in range(2)]
                        for o in range(2)]  # fmt: skip
            r_a = [sum(positive[o][i] * r_b[o] / _stabilized(sum(positive[o])) for o in range(2)) for i in range(2)]
            # z-box: x w - low w+ - high w-, the conv bias cancels.
            box = [[x[p][c] * wa[o][c] - low * max(wa[o][c], 0) - high * min(wa[o][c], 0) for c in range(3)]
                   for o in range(2)]  # fmt: skip
            for c in range(3):
                input_relevance[n, c, p[0], p[1]] = sum(box[o][c] * r_a[o] / _stabilized(sum(box[o])) for o in range(2))
            score_b = [s + abs(r) for s, r in zip(score_b, r_b, strict=True)]
            score_a = [s + abs(r) for s, r in zip(score_a, r_a, strict=True)]

    got = score_channels(net, [(inputs, targets)], "lrp", norm=False)
    assert set(got) == {"0", "3"}
    torch.testing.assert_close(got["3"], torch.tensor(score_b, dtype=torch.float32), rtol=1e-6, atol=0)
    torch.testing.assert_close(got["0"], torch.tensor(score_a, dtype=torch.float32), rtol=1e-6, atol=0)
    prepared = criteria._prepared_for_lrp(net)
    with criteria._lrp_composite().context(prepared):
        relevance, _ = criteria._lrp_batch(prepared, criteria.scored_convs(prepared), inputs, targets)
    torch.testing.assert_close(relevance, input_relevance, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("cifar_stem", [False, True], ids=["maxpool-stem", "cifar-stem"])
def test_lrp_conserves_relevance_through_resnet18(cifar_stem: bool) -> None:
    """Every rule conserves relevance except the head's bias: with it zeroed, each sample's input relevance sums
    to its start relevance, 1. Measured deviation over 6 seeds x 2 stems: <= 1.4e-4 (the 1e-6 stabilisers and
    rare zero z+ denominators lose a little); the tolerance is 1e-3."""
    model = _calibrated_resnet18(cifar_stem=cifar_stem).eval()
    nn.init.zeros_(model.fc.bias)
    before = _model_state(model)
    inputs, targets = _batches(1, pixels=16 if cifar_stem else 32)[0]
    prepared = criteria._prepared_for_lrp(model)
    with criteria._lrp_composite().context(prepared):
        relevance, per_conv = criteria._lrp_batch(prepared, criteria.scored_convs(prepared), inputs, targets)
    torch.testing.assert_close(relevance.sum(dim=(1, 2, 3)), torch.ones(4), rtol=0, atol=1e-3)
    # The stem output carries all of it (z-box conserves), so its |relevance| is at least 1 per sample.
    assert per_conv["conv1"].sum() >= 4 * (1 - 1e-3)
    # The canonizer fused BN into a copy: the original model is untouched.
    after = _model_state(model)
    assert all(torch.equal(v, after["tensors"][k]) for k, v in before["tensors"].items())


def _prune_block_inner_channels(block: nn.Module, keep: int) -> None:
    """Physically drop the last output channels of a BasicBlock's conv1 (and the matching BN and conv2 inputs)."""
    conv1, bn1, conv2 = block.conv1, block.bn1, block.conv2
    small1 = nn.Conv2d(conv1.in_channels, keep, 3, stride=conv1.stride, padding=1, bias=False)
    small_bn = nn.BatchNorm2d(keep)
    small2 = nn.Conv2d(keep, conv2.out_channels, 3, padding=1, bias=False)
    with torch.no_grad():
        small1.weight.copy_(conv1.weight[:keep])
        small2.weight.copy_(conv2.weight[:, :keep])
        for key in ("weight", "bias", "running_mean", "running_var"):
            getattr(small_bn, key).copy_(getattr(bn1, key)[:keep])
    block.conv1, block.bn1, block.conv2 = small1, small_bn, small2


@pytest.mark.parametrize("criterion", CRITERIA_NAMES)
def test_pruned_cifar_stem_model_is_scored(criterion: str) -> None:
    model = _calibrated_resnet18(cifar_stem=True, seed=1)
    _prune_block_inner_channels(model.layer1[0], 40)
    _prune_block_inner_channels(model.layer3[1], 100)
    model.eval()
    scores = score_channels(model, _batches(1, size=2, pixels=16), criterion)
    assert len(scores) == 20
    assert scores["layer1.0.conv1"].shape == (40,) and scores["layer3.1.conv1"].shape == (100,)
    assert all(torch.isfinite(v).all() and (v >= 0).all() for v in scores.values())


# ------------------------------------------------------------------------------------------- normalize, errors


def test_normalize_by_criterion() -> None:
    scores = {"a": torch.tensor([1.0, 3.0, 0.0, 4.0]), "b": torch.tensor([-3.0, 4.0]), "c": torch.zeros(3)}
    for name in ("weight", "lrp"):  # L1
        out = normalize(scores, name)
        torch.testing.assert_close(out["a"], torch.tensor([0.125, 0.375, 0.0, 0.5]))
        torch.testing.assert_close(out["c"], torch.zeros(3))
    for name in ("grad", "taylor"):  # L2 of |v|
        out = normalize(scores, name)
        torch.testing.assert_close(out["a"], torch.tensor([1.0, 3.0, 0.0, 4.0]) / 26**0.5)
        torch.testing.assert_close(out["b"], torch.tensor([0.6, 0.8]))
        torch.testing.assert_close(out["c"], torch.zeros(3))


def test_bad_arguments_raise_one_line_errors() -> None:
    net = _tiny_network()
    with pytest.raises(ValueError, match=r"^unknown criterion 'fisher'; allowed: weight, grad, taylor, lrp$"):
        score_channels(net, [], "fisher")
    with pytest.raises(ValueError, match=r"unknown criterion 'L1'"):
        normalize({}, "L1")
    with pytest.raises(ValueError, match=r"max_batches must be None or an integer >= 1, got 0"):
        score_channels(net, [], "grad", max_batches=0)
    with pytest.raises(ValueError, match=r"loader yielded no batches"):
        score_channels(net, [], "taylor")


def test_spa_criteria_imports_no_tracking_or_search_library() -> None:
    code = "import sys, spa.criteria; print([m for m in ('ray', 'mlflow', 'optuna') if m in sys.modules])"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_fast_zplus_equals_zennit_alpha1_beta0(arch: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The one-pass z+ rule gives zennit's own AlphaBeta(1, 0) scores: every ResNet conv input is post-ReLU."""
    from zennit.rules import AlphaBeta

    torch.manual_seed(0)
    model = build_resnet(arch, 5).eval()
    batches = [(torch.randn(3, 3, 32, 32), torch.tensor([0, 3, 4]))]
    fast = score_channels(model, batches, "lrp", norm=False)
    monkeypatch.setattr(
        criteria,
        "NonNegativeZPlus",
        lambda stabilizer, zero_params: AlphaBeta(alpha=1.0, beta=0.0, stabilizer=stabilizer, zero_params=zero_params),
    )
    reference = score_channels(model, batches, "lrp", norm=False)
    assert fast.keys() == reference.keys()
    for name in fast:
        torch.testing.assert_close(fast[name], reference[name], rtol=1e-5, atol=1e-7, msg=name)
