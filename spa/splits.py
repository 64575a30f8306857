"""The shapes every dataset takes (``DatasetInfo``, ``Splits``, ``Loaders``) and how splits are cut.

Shared by the dataset sources (``spa.digits`` and the torchvision sets in ``spa.data``); ``spa.data`` is the
entry point that loads a dataset by name, and a caller imports these shapes from here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset

__all__ = [
    "DataError",
    "DatasetFilesError",
    "DatasetInfo",
    "Splits",
    "Loaders",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "TEST_SPLIT_SEED",
    "TEST_FRACTION",
    "VAL_FRACTION",
    "Transformed",
    "carve_val",
    "one_line",
    "stratified_test_split",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# The train/test split of sets without an official one (digits, a flat image folder) uses this seed, never the
# run seed, so the test set is the same for every run.
TEST_SPLIT_SEED = 0
TEST_FRACTION = 0.2
# The val share of the training data when neither the run nor the dataset names one (DatasetInfo.val_fraction).
VAL_FRACTION = 0.1


class DataError(ValueError):
    """A dataset that cannot be loaded (unknown name, missing files); the message is one line."""


class DatasetFilesError(DataError):
    """A torchvision dataset whose files are missing or refused under ``data_dir``: ``problem`` says what (one
    line), the message adds what to do with ``spa.run``'s flags; a command without ``--download`` says its own."""

    def __init__(self, problem: str, *, downloadable: bool) -> None:
        remedy = "or pass --download (download=True)" if downloadable else "(torchvision cannot download it)"
        super().__init__(f"{problem}; put the original files there {remedy}")
        self.problem, self.downloadable = problem, downloadable


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int
    input_size: tuple[int, int, int]  # (C, H, W) of one model input
    cifar_stem: bool  # a 3x3/1 stem without max-pool suits these inputs
    mean: tuple[float, float, float] = IMAGENET_MEAN  # the normalisation applied to the inputs
    std: tuple[float, float, float] = IMAGENET_STD
    val_fraction: float = VAL_FRACTION  # the val share of the training data a run gets unless it names one


@dataclass
class Splits:
    train: Dataset  # with training augmentation
    val: Dataset  # carved from the training data, eval transforms: what studies optimise
    test: Dataset  # eval transforms; only reported
    info: DatasetInfo
    train_eval: Dataset | None = None  # the train samples with eval transforms (for channel scoring)


@dataclass
class Loaders:
    train: DataLoader
    val: DataLoader
    test: DataLoader
    info: DatasetInfo


def one_line(text: object) -> str:
    return " ".join(str(text).split())


def _val_count(n: int, val_fraction: float) -> int:
    if n < 2:
        raise DataError(f"cannot carve a val split from {n} training sample(s); need at least 2")
    return min(max(round(val_fraction * n), 1), n - 1)


def carve_val(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, val) positions in ``range(n)``: a seeded random ``val_fraction`` is val; both sorted."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = _val_count(n, val_fraction)
    return sorted(order[n_val:]), sorted(order[:n_val])


def stratified_test_split(
    labels: Sequence[int], test_fraction: float = TEST_FRACTION, seed: int = TEST_SPLIT_SEED
) -> tuple[list[int], list[int]]:
    """(train, test) positions: ``round(test_fraction * n_c)`` of each class's n_c samples go to test. By default
    the fixed split of every set without an official one (the same test set for every run)."""
    labels_t = torch.as_tensor(list(labels))
    generator = torch.Generator().manual_seed(seed)
    train: list[int] = []
    test: list[int] = []
    for label in torch.unique(labels_t).tolist():  # sorted, so the draw order is fixed
        members = torch.nonzero(labels_t == label).flatten()
        members = members[torch.randperm(len(members), generator=generator)].tolist()
        n_test = round(test_fraction * len(members))
        test += members[:n_test]
        train += members[n_test:]
    return sorted(train), sorted(test)


class Transformed(Dataset):
    """A view of ``base`` (which returns ``(image, label)`` untransformed) with its own transform.

    One base object serves a train view (augmented) and an eval view over the same files or arrays, so
    in-memory sets such as CIFAR are held once.
    """

    def __init__(self, base: Dataset, transform: Callable) -> None:
        self.base = base
        self.transform = transform

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int):
        image, label = self.base[index]
        return self.transform(image), label
