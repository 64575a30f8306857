"""In-memory datasets held on the training device and augmented there in batches: no per-image Python, no workers.

The small sets (``digits``, ``digits-source``, ``cifar10``, ``cifar100``, ``fashion-mnist``) fit on any GPU as
uint8 (CIFAR-10's 60,000 images are 184 MB), so each trial copies them to the device once. Every batch is then
cropped, flipped and normalised on the device with the same distribution as the torchvision transforms of
``spa.data`` that it replaces:

- CIFAR / Fashion-MNIST: ``RandomCrop(32, padding=4)`` (zero fill, offsets uniform in 0..8 per axis), then
  ``RandomHorizontalFlip()`` (p = 0.5), ``ToTensor()`` (/ 255) and ``Normalize(ImageNet mean, std)``.
  Fashion-MNIST is first ``Pad(2)``-ed to 32 px and copied to 3 channels, as ``Grayscale(3), Pad(2)``.
- digits: a shift of up to ``DIGITS_MAX_SHIFT`` px filled with the blank background, no flip: a random crop with
  padding 2 of the 0..1 image, which is what ``DigitsDataset`` draws.

Shuffling and augmentation draw from one ``torch.Generator`` on the data device, exposed as ``loader.generator``:
``spa.training._reseed(loader, seed)`` re-seeds it at the start of every (seed, step, epoch) phase, exactly as
it re-seeds a ``DataLoader``'s, so a resumed run replays the same batches. The draws differ from the CPU
DataLoader's (another generator, another order of draws): the same distribution, not the same samples.

Works on CPU tensors as well (the tests run there). Image-folder sets at 224 px keep ``spa.data``'s DataLoader.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Subset

from spa.digits import DIGITS_MAX_SHIFT, DigitsDataset
from spa.splits import DataError, DatasetInfo, Loaders, Splits

__all__ = ["Augmentation", "DeviceLoader", "DeviceSet", "device_loaders", "draw_augmentation", "augment", "SUPPORTED"]

SUPPORTED = ("digits", "digits-source", "cifar10", "cifar100", "fashion-mnist")
CROP_PADDING = 4  # torchvision RandomCrop(32, padding=4) in spa.data


@dataclass(frozen=True)
class Augmentation:
    """A random crop of the zero-padded image (offsets uniform in ``0..2*padding`` per axis), then a horizontal
    flip with probability 0.5 when ``flip``."""

    padding: int
    flip: bool


@dataclass
class DeviceSet:
    """Images kept as stored: ``images`` (N, C, H, W), uint8 (scaled by 1/255) or float in 0..1, with C = 1
    (copied to 3 channels per batch) or 3; ``labels`` (N,) int64; both on the data device."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)


def draw_augmentation(
    batch: int, augmentation: Augmentation, generator: torch.Generator, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-image crop offsets ``dy``, ``dx`` (batch,) in ``0..2*padding`` and flips (batch,) bool."""
    span = 2 * augmentation.padding + 1
    offsets = torch.randint(0, span, (2, batch), generator=generator, device=device)
    if augmentation.flip:
        flips = torch.rand(batch, generator=generator, device=device) < 0.5
    else:
        flips = torch.zeros(batch, dtype=torch.bool, device=device)
    return offsets[0], offsets[1], flips


def augment(
    images: torch.Tensor, padding: int, dy: torch.Tensor, dx: torch.Tensor, flips: torch.Tensor
) -> torch.Tensor:
    """Crop each image (B, C, H, W) at (dy, dx) of its zero-padded copy and mirror the flipped ones: one gather.

    Image b's output pixel (h, w) is padded pixel (dy + h, dx + w), or (dy + h, dx + W - 1 - w) when flipped (the
    flip acts on the crop, as torchvision's RandomHorizontalFlip after RandomCrop). Returns channels-last memory.
    """
    b, _, h, w = images.shape
    padded = F.pad(images, (padding,) * 4)  # (B, C, H + 2p, W + 2p), zero fill
    rows = dy[:, None] + torch.arange(h, device=images.device)  # (B, H)
    columns = torch.arange(w, device=images.device).expand(b, w)
    columns = torch.where(flips[:, None], w - 1 - columns, columns) + dx[:, None]  # (B, W)
    batch_index = torch.arange(b, device=images.device)[:, None, None]
    gathered = padded.permute(0, 2, 3, 1)[batch_index, rows[:, :, None], columns[:, None, :]]  # (B, H, W, C)
    return gathered.permute(0, 3, 1, 2)  # (B, C, H, W), channels-last in memory


class DeviceLoader:
    """Batches of a ``DeviceSet``: shuffled and augmented (training) or in order and plain (evaluation).

    Iterating yields ``(images, labels)``: images float32 (B, 3, H, W), normalised, channels-last; labels int64.
    ``generator`` drives shuffling and augmentation; re-seed it to replay an epoch.
    """

    def __init__(
        self,
        data: DeviceSet,
        *,
        batch_size: int,
        info: DatasetInfo,
        shuffle: bool = False,
        augmentation: Augmentation | None = None,
        seed: int = 0,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise DataError(f"batch_size={batch_size!r} is not allowed; allowed: an integer >= 1")
        self.data = data
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.augmentation = augmentation
        self.device = data.images.device
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        n = len(data)
        # As spa.data.make_loaders: drop the last training batch only when it would hold one sample (BatchNorm).
        self.drop_last = shuffle and n > 1 and batch_size > 1 and n % batch_size == 1
        scale = 1 / 255 if data.images.dtype == torch.uint8 else 1.0
        mean = torch.tensor(info.mean, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(info.std, device=self.device).view(1, 3, 1, 1)
        # (x * scale - mean) / std as one multiply-add: the ToTensor() + Normalize() of spa.data.
        self._multiplier, self._offset = scale / std, -mean / std

    def __len__(self) -> int:
        n = len(self.data)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.data)
        if self.shuffle:
            order = torch.randperm(n, generator=self.generator, device=self.device)
        else:
            order = torch.arange(n, device=self.device)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            index = order[start : start + self.batch_size]
            images = self.data.images[index]
            if self.augmentation is not None:
                dy, dx, flips = draw_augmentation(len(index), self.augmentation, self.generator, self.device)
                images = augment(images, self.augmentation.padding, dy, dx, flips)
            images = images.float().expand(-1, 3, -1, -1) * self._multiplier + self._offset
            yield images.contiguous(memory_format=torch.channels_last), self.data.labels[index]


# ------------------------------------------------------------------------------------- from spa.data's splits


def _labels(targets: object) -> torch.Tensor:
    return torch.as_tensor(np.asarray(targets), dtype=torch.int64)


def _torchvision_arrays(base: object, grayscale: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, C, 32, 32) uint8 and (N,) labels from a torchvision CIFAR (``data`` N x H x W x 3) or Fashion-MNIST
    (``data`` N x 28 x 28, padded by 2 as ``Pad(2)``) dataset."""
    data = torch.as_tensor(np.asarray(base.data))  # type: ignore[attr-defined]
    if grayscale:
        images = F.pad(data.unsqueeze(1), (2, 2, 2, 2))  # (N, 1, 32, 32)
    else:
        images = data.permute(0, 3, 1, 2).contiguous()  # (N, 3, 32, 32)
    return images, _labels(base.targets)  # type: ignore[attr-defined]


def _digits_arrays(dataset: DigitsDataset, info: DatasetInfo) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 1, 32, 32) float in 0..1: the rendered digits un-normalised (they are one channel copied three times)."""
    images = dataset.images[:, :1] * info.std[0] + info.mean[0]
    return images.contiguous(), dataset.labels


def _subset_positions(dataset: object) -> tuple[object, torch.Tensor | None]:
    if isinstance(dataset, Subset):
        return dataset.dataset, torch.as_tensor(dataset.indices, dtype=torch.int64)
    return dataset, None


def _device_set(dataset: object, info: DatasetInfo, device: torch.device) -> DeviceSet:
    if isinstance(dataset, DigitsDataset):
        images, labels = _digits_arrays(dataset, info)
        return DeviceSet(images.to(device), labels.to(device))
    view, positions = _subset_positions(dataset)
    base = getattr(view, "base", None)  # spa.splits.Transformed over a torchvision dataset
    if base is None or not hasattr(base, "data"):
        raise DataError(f"dataset {info.name!r} is not an in-memory set; allowed: {', '.join(SUPPORTED)}")
    images, labels = _torchvision_arrays(base, grayscale=info.name == "fashion-mnist")
    if positions is not None:
        images, labels = images[positions], labels[positions]
    return DeviceSet(images.to(device), labels.to(device))


def device_loaders(
    splits: Splits, *, batch_size: int, seed: int, device: torch.device | str
) -> tuple[Loaders, DeviceLoader]:
    """Device-resident train / val / test loaders and the scoring loader (train samples, in order, plain) for
    splits made by ``spa.data.load_splits``; the train loader shuffles and augments, seeded with ``seed``.

    Raises ``DataError`` (one line) for a set that is not held in memory (224 px image folders)."""
    info = splits.info
    if info.name not in SUPPORTED:
        raise DataError(f"dataset {info.name!r} cannot be held on the device; allowed: {', '.join(SUPPORTED)}")
    if splits.train_eval is None:
        raise DataError(f"splits of {info.name!r} carry no train_eval dataset")
    device = torch.device(device)
    digits = info.name.startswith("digits")
    augmentation = Augmentation(padding=DIGITS_MAX_SHIFT if digits else CROP_PADDING, flip=not digits)
    train = _device_set(splits.train_eval, info, device)  # the train samples unaugmented; augmented per batch

    def plain(data: DeviceSet) -> DeviceLoader:
        return DeviceLoader(data, batch_size=batch_size, info=info)

    loaders = Loaders(
        train=DeviceLoader(train, batch_size=batch_size, info=info, shuffle=True, augmentation=augmentation, seed=seed),
        val=plain(_device_set(splits.val, info, device)),
        test=plain(_device_set(splits.test, info, device)),
        info=info,
    )
    return loaders, plain(train)
