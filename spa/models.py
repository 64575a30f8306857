"""ResNet builders for transfer: torchvision architectures, pretrained weights, the CIFAR stem, a fresh head."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models as tv_models

from spa.validation import is_int

__all__ = [
    "ARCHITECTURES",
    "build_resnet",
    "fetch_imagenet_weights",
    "imagenet_weights_file",
    "load_backbone_state",
    "WeightsError",
]

# name -> (builder, ImageNet weights enum)
ARCHITECTURES = {
    "resnet18": (tv_models.resnet18, tv_models.ResNet18_Weights.IMAGENET1K_V1),
    "resnet34": (tv_models.resnet34, tv_models.ResNet34_Weights.IMAGENET1K_V1),
    "resnet50": (tv_models.resnet50, tv_models.ResNet50_Weights.IMAGENET1K_V1),
}


class WeightsError(ValueError):
    """Weights that cannot be loaded (missing file, wrong architecture)."""


def imagenet_weights_file(arch: str) -> tuple[str, Path]:
    """torchvision's URL of the ImageNet weights of ``arch``, and where ``torch.hub`` caches them."""
    url = ARCHITECTURES[arch][1].url
    return url, Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[1]


def fetch_imagenet_weights(arch: str) -> Path:
    """The cached ImageNet weights of ``arch``, downloaded (hash-checked, by ``torch.hub``) if missing.

    Called before a run loads any data, so that no network is one ``WeightsError`` line, not a traceback after the
    data are loaded (``build_resnet`` then reads the cached file).
    """
    url, cached = imagenet_weights_file(arch)
    if cached.is_file():
        return cached
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(cached), hash_prefix=cached.stem.rsplit("-", 1)[-1])
    except (OSError, RuntimeError) as error:  # urllib's URLError is an OSError; a bad hash is a RuntimeError
        reason = " ".join(str(getattr(error, "reason", error)).split())
        raise WeightsError(
            f"weights='imagenet': the {arch} ImageNet weights are not in the torch hub cache ({cached}) and could "
            f"not be downloaded from {url} ({reason}); connect to the network once, or put {cached.name} there"
        ) from None
    return cached


def build_resnet(
    arch: str,
    num_classes: int,
    cifar_stem: bool = False,
    weights: str | Path | None = None,
) -> nn.Module:
    """A torchvision ResNet with a fresh ``num_classes`` head.

    ``weights``: ``None``/``"none"`` (random init), ``"imagenet"`` (torchvision's weights, downloaded and cached
    by torchvision), or a path to a state dict (loaded with ``weights_only=True``; a head of another size is
    skipped). ``cifar_stem`` swaps the 7x7/2 stem and max-pool for a 3x3/1 conv (for 32 px inputs), whose
    kernel is the pretrained 7x7 kernel average-pooled to 3x3.
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown arch {arch!r}; allowed: {', '.join(ARCHITECTURES)}")
    if not (is_int(num_classes) and num_classes >= 2):
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    builder, imagenet = ARCHITECTURES[arch]
    state: dict[str, torch.Tensor] | None = None
    if weights is None or weights == "none":
        model = builder(weights=None)
    elif weights == "imagenet":
        model = builder(weights=imagenet)
    else:
        model = builder(weights=None)
        state = load_backbone_state(weights)
    if state is not None and any(k.startswith("conv1.") for k in state) and state["conv1.weight"].shape[-1] == 3:
        # A state dict saved from a CIFAR-stem model: build the stem first so its conv1 fits.
        _use_cifar_stem(model)
    if state is not None:
        _load_without_head(model, state, weights)
    if cifar_stem and model.conv1.kernel_size != (3, 3):
        _use_cifar_stem(model)
    elif not cifar_stem and model.conv1.kernel_size == (3, 3):
        raise WeightsError(f"weights {weights} were saved with the CIFAR stem; build with cifar_stem=True")
    model.fc = nn.Linear(model.fc.in_features, num_classes)
    return model


def _use_cifar_stem(model: nn.Module) -> None:
    old = model.conv1
    conv = nn.Conv2d(3, old.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
    with torch.no_grad():
        # (64, 3, 7, 7) -> (64, 3, 3, 3), keeping the pretrained filters' structure.
        conv.weight.copy_(F.adaptive_avg_pool2d(old.weight, 3))
    model.conv1 = conv
    model.maxpool = nn.Identity()


def load_backbone_state(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise WeightsError(
            f"weights file {str(path)!r} does not exist; allowed: 'imagenet', 'none' or a state-dict path"
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise WeightsError(f"weights file {str(path)!r} does not hold a state dict")
    return state


def _load_without_head(model: nn.Module, state: dict[str, torch.Tensor], source: object) -> None:
    body = {k: v for k, v in state.items() if not k.startswith("fc.")}
    own = model.state_dict()
    mismatched = [k for k, v in body.items() if k in own and own[k].shape != v.shape]
    if mismatched:
        raise WeightsError(f"weights {source} do not fit this architecture: shape mismatch at {mismatched[:3]}")
    missing, unexpected = model.load_state_dict(body, strict=False)
    missing = [k for k in missing if not k.startswith("fc.")]
    if missing or unexpected:
        raise WeightsError(
            f"weights {source} do not fit this architecture: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
