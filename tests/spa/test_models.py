"""ResNet builder: stems, heads and weights from a state-dict path."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from spa.models import WeightsError, build_resnet


def test_cifar_stem_is_the_pooled_pretrained_kernel(tmp_path) -> None:
    torch.manual_seed(0)
    source = build_resnet("resnet18", 5)
    path = tmp_path / "backbone.pt"
    torch.save(source.state_dict(), path)
    model = build_resnet("resnet18", 10, cifar_stem=True, weights=str(path))
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, nn.Identity)
    expected = F.adaptive_avg_pool2d(source.conv1.weight, 3)
    torch.testing.assert_close(model.conv1.weight, expected)
    # 7x7 -> 3x3 by adaptive pooling: output (0, 0) averages rows/cols 0..2 of the kernel.
    torch.testing.assert_close(model.conv1.weight[:, :, 0, 0], source.conv1.weight[:, :, :3, :3].mean((2, 3)))
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_state_dict_weights_load_body_and_fresh_head(tmp_path) -> None:
    torch.manual_seed(0)
    source = build_resnet("resnet34", 5)
    path = tmp_path / "w.pt"
    torch.save(source.state_dict(), path)
    model = build_resnet("resnet34", 3, weights=path)
    torch.testing.assert_close(model.layer3[2].conv2.weight, source.layer3[2].conv2.weight)
    torch.testing.assert_close(model.bn1.running_var, source.bn1.running_var)
    assert model.fc.out_features == 3


def test_cifar_stem_state_dict_round_trip(tmp_path) -> None:
    source = build_resnet("resnet18", 5, cifar_stem=True)
    path = tmp_path / "cifar.pt"
    torch.save(source.state_dict(), path)
    model = build_resnet("resnet18", 5, cifar_stem=True, weights=path)
    torch.testing.assert_close(model.conv1.weight, source.conv1.weight)
    with pytest.raises(WeightsError, match="CIFAR stem"):
        build_resnet("resnet18", 5, weights=path)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"arch": "resnet101", "num_classes": 10}, "unknown arch 'resnet101'; allowed: resnet18, resnet34, resnet50"),
        ({"arch": "resnet18", "num_classes": 1}, "num_classes must be an integer >= 2"),
        ({"arch": "resnet18", "num_classes": 10, "weights": "/nonexistent/w.pt"}, "does not exist"),
    ],
)
def test_bad_input_one_line(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match) as info:
        build_resnet(**kwargs)
    assert "\n" not in str(info.value)


def test_weights_of_another_architecture_are_refused(tmp_path) -> None:
    path = tmp_path / "r18.pt"
    torch.save(build_resnet("resnet18", 5).state_dict(), path)
    with pytest.raises(WeightsError, match="do not fit"):
        build_resnet("resnet50", 5, weights=path)


def test_imagenet_weights_are_read_from_the_hub_cache_without_network(tmp_path, monkeypatch) -> None:
    import torch.hub
    from torchvision import models as tv_models

    from spa.models import fetch_imagenet_weights, imagenet_weights_file

    def no_network(*args, **kwargs):
        raise AssertionError("a test tried to download")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(torch.hub, "urlopen", no_network)
    url, cached = imagenet_weights_file("resnet18")
    assert url == "https://download.pytorch.org/models/resnet18-f37072fd.pth"
    assert cached == tmp_path / "checkpoints" / "resnet18-f37072fd.pth"
    torch.manual_seed(3)
    cached.parent.mkdir()
    saved = tv_models.resnet18().state_dict()
    torch.save(saved, cached)
    assert fetch_imagenet_weights("resnet18") == cached
    model = build_resnet("resnet18", 10, weights="imagenet")
    torch.testing.assert_close(model.layer4[1].conv2.weight, saved["layer4.1.conv2.weight"], rtol=0, atol=0)
    assert model.fc.out_features == 10
