"""The device-resident data path on CPU tensors: same support and values as the torchvision transforms it
replaces, seeded and resumable, and every sample once per epoch."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import functional as TF

from spa import data as spa_data
from spa.digits import DIGITS_MAX_SHIFT
from spa.gpu_data import Augmentation, DeviceLoader, DeviceSet, augment, device_loaders, draw_augmentation
from spa.training import _reseed


class _FakeTorchvisionSet:
    """What torchvision's CIFAR10 (``data`` N x 32 x 32 x 3) or FashionMNIST (``data`` N x 28 x 28) holds."""

    def __init__(self, data: np.ndarray, targets: list[int]) -> None:
        self.data, self.targets = data, targets

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        mode = "L" if self.data.ndim == 3 else "RGB"
        return Image.fromarray(self.data[index], mode=mode), self.targets[index]


def _fake_splits(name: str, n: int = 40, seed: int = 0) -> spa_data.Splits:
    rng = np.random.default_rng(0)
    shape = (n, 28, 28) if name == "fashion-mnist" else (n, 32, 32, 3)
    train = _FakeTorchvisionSet(rng.integers(0, 256, shape, dtype=np.uint8), list(rng.integers(0, 10, n)))
    test = _FakeTorchvisionSet(rng.integers(0, 256, shape, dtype=np.uint8), list(rng.integers(0, 10, n // 2)))
    transforms = spa_data._transforms_32(grayscale=name == "fashion-mnist")
    info = spa_data._INFOS[name]
    return spa_data._splits_from_bases(info, train, test, transforms, val_fraction=0.25, seed=seed)


def test_draws_cover_exactly_the_random_crop_and_flip_support() -> None:
    generator = torch.Generator().manual_seed(0)
    dy, dx, flips = draw_augmentation(20_000, Augmentation(padding=4, flip=True), generator, torch.device("cpu"))
    outcomes = torch.stack([dy, dx, flips.long()], 1).unique(dim=0, return_counts=True)
    # torchvision RandomCrop(32, padding=4): i, j = randint(0, 40 - 32 + 1); RandomHorizontalFlip: p = 0.5.
    expected = {(i, j, f) for i in range(9) for j in range(9) for f in (0, 1)}
    assert {tuple(o) for o in outcomes[0].tolist()} == expected
    counts = outcomes[1].double()
    mean = 20_000 / len(expected)
    assert ((counts - mean) ** 2 / mean).sum().item() < 250  # chi-square, 161 dof: p ~ 1e-5 at 250
    no_flip = draw_augmentation(500, Augmentation(padding=2, flip=False), generator, torch.device("cpu"))
    assert set(no_flip[0].tolist()) == set(range(5)) and not no_flip[2].any()


def test_every_crop_and_flip_equals_torchvision_on_the_image() -> None:
    rng = np.random.default_rng(1)
    array = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    image = Image.fromarray(array)
    tensor = torch.from_numpy(array).permute(2, 0, 1)[None]  # (1, 3, 32, 32) uint8
    padded = TF.pad(image, 4)  # what RandomCrop(padding=4) crops from
    for i, j, flip in itertools.product(range(9), range(9), (False, True)):
        expected = TF.crop(padded, i, j, 32, 32)
        if flip:
            expected = TF.hflip(expected)
        actual = augment(tensor, 4, torch.tensor([i]), torch.tensor([j]), torch.tensor([flip]))
        assert torch.equal(actual[0], TF.pil_to_tensor(expected)), (i, j, flip)


@pytest.mark.parametrize("name", ["cifar10", "fashion-mnist"])
def test_eval_batches_equal_the_torchvision_eval_transform(name: str) -> None:
    splits = _fake_splits(name)
    loaders, score = device_loaders(splits, batch_size=7, seed=0, device="cpu")
    for loader, dataset in ((loaders.val, splits.val), (loaders.test, splits.test), (score, splits.train_eval)):
        images = torch.cat([x for x, _ in loader])
        labels = torch.cat([y for _, y in loader])
        expected = torch.stack([dataset[i][0] for i in range(len(dataset))])
        assert images.shape == expected.shape and images.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(images, expected, rtol=0, atol=1e-5)
        assert labels.tolist() == [int(dataset[i][1]) for i in range(len(dataset))]


def test_training_batches_are_crops_of_the_normalised_padded_images() -> None:
    splits = _fake_splits("cifar10")
    loaders, _ = device_loaders(splits, batch_size=8, seed=3, device="cpu")
    plain = torch.stack([splits.train_eval[i][0] for i in range(len(splits.train_eval))])
    blank = torch.tensor([-m / s for m, s in zip(spa_data.IMAGENET_MEAN, spa_data.IMAGENET_STD, strict=True)]).view(
        3, 1, 1
    )
    padded = blank.expand(len(plain), 3, 40, 40).clone()
    padded[:, :, 4:36, 4:36] = plain
    labels = torch.tensor([int(splits.train_eval[i][1]) for i in range(len(plain))])
    # Each augmented image must be one of the 162 crops/flips of a training image with its label.
    for images, batch_labels in loaders.train:
        for image, label in zip(images, batch_labels, strict=True):
            found = False
            for index in torch.nonzero(labels == label).flatten().tolist():
                for i, j in itertools.product(range(9), range(9)):
                    crop = padded[index, :, i : i + 32, j : j + 32]
                    if torch.allclose(image, crop, atol=1e-5) or torch.allclose(image, crop.flip(-1), atol=1e-5):
                        found = True
                        break
                if found:
                    break
            assert found


def test_digits_match_the_digits_dataset() -> None:
    splits = spa_data.load_splits("digits", seed=0)
    loaders, score = device_loaders(splits, batch_size=64, seed=0, device="cpu")
    expected = splits.val.images
    torch.testing.assert_close(torch.cat([x for x, _ in loaders.val]), expected, rtol=0, atol=1e-5)
    assert loaders.train.augmentation == Augmentation(padding=DIGITS_MAX_SHIFT, flip=False)
    assert len(loaders.train.data) == len(splits.train)


def test_an_epoch_visits_every_sample_once_and_reseeding_replays_it() -> None:
    data = DeviceSet(
        torch.arange(33, dtype=torch.uint8).view(33, 1, 1, 1).expand(33, 1, 4, 4).clone(), torch.arange(33)
    )
    info = spa_data._INFOS["cifar10"]
    loader = DeviceLoader(data, batch_size=4, info=info, shuffle=True, augmentation=Augmentation(1, True), seed=5)
    assert len(loader) == 8 and loader.drop_last  # 33 = 8 * 4 + 1: the lone sample is dropped, as make_loaders

    def epoch(seed: int) -> tuple[list[int], torch.Tensor]:
        _reseed(loader, seed)  # what train_one_epoch does at the start of each (seed, step, epoch) phase
        batches = list(loader)
        return torch.cat([y for _, y in batches]).tolist(), torch.cat([x for x, _ in batches])

    labels, images = epoch(11)
    assert len(set(labels)) == 32 and set(labels) <= set(range(33))
    again_labels, again_images = epoch(11)
    assert again_labels == labels and torch.equal(again_images, images)
    other_labels, _ = epoch(12)
    assert other_labels != labels
    # Resume: a fresh loader re-seeded to the same phase replays the same epoch.
    fresh = DeviceLoader(data, batch_size=4, info=info, shuffle=True, augmentation=Augmentation(1, True), seed=0)
    _reseed(fresh, 11)
    assert torch.cat([y for _, y in fresh]).tolist() == labels


def test_image_folders_are_refused_in_one_line() -> None:
    splits = _fake_splits("cifar10")
    splits.info = spa_data.DatasetInfo("flowers102", 102, (3, 224, 224), cifar_stem=False)
    with pytest.raises(spa_data.DataError, match="cannot be held on the device") as error:
        device_loaders(splits, batch_size=4, seed=0, device="cpu")
    assert "\n" not in str(error.value)
