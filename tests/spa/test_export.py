"""spa.export: the deployable network of a checkpoint computes what the trained, adapted network computed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from spa import counting
from spa.adapters import is_adapted
from spa.checkpoint import load_checkpoint, save_checkpoint
from spa.config import ExperimentConfig
from spa.experiment import build_model
from spa.export import deployable_model, kept_channels, restore_model
from spa.pruning import network_conv_names, prune_to_density


def pruned_checkpoint(directory: Path, learner: str, density: float, *, cifar_stem: bool = False) -> Path:
    """A checkpoint as run_experiment writes one: a pruned network (random scores) with non-trivial BatchNorm
    statistics, so eval mode and the merged adapters both matter."""
    torch.manual_seed(0)
    config = ExperimentConfig.from_flat(
        {"learner": learner, "rank": 4, "dataset": "cifar10" if cifar_stem else "digits"}
    )
    model = build_model(config, 10 if cifar_stem else 5, cifar_stem, weights=None)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.1)
            module.running_var.uniform_(0.5, 2.0)
    for module in model.modules():  # adapters start at dW ~ 0: make the update count
        if hasattr(module, "lora_b"):
            torch.nn.init.normal_(module.lora_b.weight, std=0.05)
    reference = counting.conv_channels(model)
    scores = {name: torch.rand(conv.out_channels) for name, conv in network_conv_names(model).items()}
    prune_to_density(
        model, scores, density, reference, torch.zeros(1, 3, 32, 32), min_channels=config.prune.min_channels
    )
    save_checkpoint(directory, model, {"step": 1, "history": [], "config": config.to_flat()})
    return directory


@pytest.fixture(scope="module", params=[("splora", False), ("finetune", True)], ids=["splora", "finetune-cifar-stem"])
def checkpoint(request, tmp_path_factory) -> dict:
    learner, cifar_stem = request.param
    return load_checkpoint(pruned_checkpoint(tmp_path_factory.mktemp(learner), learner, 0.4, cifar_stem=cifar_stem))


def test_deployable_model_gives_the_trained_networks_logits(checkpoint) -> None:
    trained = restore_model(checkpoint).eval()
    deployable = deployable_model(checkpoint)
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected, actual = trained(images), deployable(images)
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)
    assert not is_adapted(deployable) and not deployable.training
    assert not any(p.requires_grad for p in deployable.parameters())
    # The deployable model's parameters are exactly what the experiment counts as the model's params.
    assert sum(p.numel() for p in deployable.parameters()) == counting.total_parameters(trained)


def test_restored_model_is_the_saved_one(checkpoint) -> None:
    restored = restore_model(checkpoint)
    state = restored.state_dict()
    assert set(state) == set(checkpoint["model"])
    assert all(torch.equal(state[k], v) for k, v in checkpoint["model"].items())


def test_kept_channels_per_conv_against_the_unpruned_network(checkpoint) -> None:
    layers = kept_channels(checkpoint)
    config = ExperimentConfig.from_flat(checkpoint["config"])
    unpruned = network_conv_names(build_model(config, 5, False, weights=None))
    assert [layer.name for layer in layers] == list(unpruned)
    assert [layer.total for layer in layers] == [conv.out_channels for conv in unpruned.values()]
    restored = network_conv_names(restore_model(checkpoint))
    assert [layer.kept for layer in layers] == [conv.out_channels for conv in restored.values()]
    density = sum(layer.kept for layer in layers) / sum(layer.total for layer in layers)
    assert density == pytest.approx(0.4, abs=0.02)
    assert all(1 <= layer.kept <= layer.total for layer in layers)
