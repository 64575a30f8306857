"""The embedded digits tasks: scikit-learn's bundled handwritten digits, rendered once and kept in memory.

``digits`` (digits 5-9, relabelled 0..4) is the transfer target; ``digits-source`` (digits 0-4) was the source
the harness pretrained on before ``printed-digits`` (``spa.sources``), kept selectable for comparison.
``spa.data``'s module docstring describes the rendering and the splits.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from spa.splits import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DataError,
    DatasetInfo,
    Splits,
    carve_val,
    stratified_test_split,
)

__all__ = [
    "DIGITS_MAX_SHIFT",
    "DigitsDataset",
    "blank_pixel",
    "digits_splits",
    "rendered_digits",
    "upsample_digits",
]

DIGITS_MAX_SHIFT = 2  # px at 32x32: half a pixel of the 8x8 source image


class DigitsDataset(Dataset):
    """In-memory rendered digits: ``images`` (N, 3, 32, 32) float32, ``labels`` (N,) int64.

    ``source_indices`` (N,) are the rows of scikit-learn's ``load_digits()`` the samples came from.
    ``max_shift > 0`` shifts each item by a random offset in [-max_shift, max_shift] px per axis (torch's global
    RNG, as torchvision's random transforms), filling with ``fill`` (the normalised blank pixel, per channel).
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        source_indices: torch.Tensor,
        *,
        max_shift: int = 0,
        fill: Sequence[float] = (0.0, 0.0, 0.0),
    ) -> None:
        self.images = images
        self.labels = labels
        self.source_indices = source_indices
        self.max_shift = max_shift
        if max_shift > 0:
            n, c, h, w = images.shape
            s = max_shift
            fill_t = torch.tensor(fill, dtype=images.dtype).view(1, c, 1, 1)
            padded = fill_t.expand(n, c, h + 2 * s, w + 2 * s).clone()  # (N, C, H + 2s, W + 2s)
            padded[:, :, s : s + h, s : s + w] = images
            self._padded = padded

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.max_shift == 0:
            return self.images[index], self.labels[index]
        _, h, w = self.images.shape[1:]
        dy, dx = torch.randint(0, 2 * self.max_shift + 1, (2,)).tolist()
        return self._padded[index, :, dy : dy + h, dx : dx + w], self.labels[index]


def _read_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits: images (1797, 8, 8) in 0..16 and targets (1797,).

    Reads the CSV that ships inside scikit-learn directly (what ``load_digits`` reads): importing
    ``sklearn.datasets`` costs most of a second, the file a few milliseconds. Falls back to ``load_digits``.
    """
    spec = importlib.util.find_spec("sklearn")
    if spec is None:
        raise DataError("dataset 'digits' needs scikit-learn, which is not installed: pip install scikit-learn")
    if spec.submodule_search_locations:
        path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            data = np.loadtxt(path, delimiter=",")
            return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images, bunch.target.astype(np.int64)


@functools.lru_cache(maxsize=1)
def rendered_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """All digits rendered once: images (N, 3, 32, 32) normalised float32, targets (N,) int64 (0..9)."""
    raw, targets = _read_digits()
    return upsample_digits(torch.from_numpy(raw).float().div(16.0)), torch.from_numpy(targets)


def upsample_digits(raw: torch.Tensor) -> torch.Tensor:
    """8x8 digit images in 0..1, (N, 8, 8) -> model inputs (N, 3, 32, 32): bilinear, 3 channels, normalised."""
    images = F.interpolate(raw.unsqueeze(1), size=(32, 32), mode="bilinear", align_corners=False)  # stays in 0..1
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return ((images.expand(-1, 3, -1, -1) - mean) / std).contiguous()  # (N, 3, 32, 32)


def blank_pixel() -> tuple[float, ...]:
    """The normalised value of an empty (0) pixel, per channel: what a shift fills with."""
    return tuple(-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD, strict=True))


def digits_splits(info: DatasetInfo, first_digit: int, *, val_fraction: float, seed: int) -> Splits:
    images, targets = rendered_digits()
    train_part, test = stratified_test_split(targets.tolist())
    digits = range(first_digit, first_digit + info.num_classes)

    def of_task(rows: list[int]) -> torch.Tensor:
        rows_t = torch.tensor(rows, dtype=torch.int64)
        return rows_t[torch.isin(targets[rows_t], torch.tensor(list(digits)))]

    train_part_t, test_t = of_task(train_part), of_task(test)
    train_pos, val_pos = carve_val(len(train_part_t), val_fraction, seed)
    blank = blank_pixel()

    def dataset(rows: torch.Tensor, max_shift: int = 0) -> DigitsDataset:
        return DigitsDataset(images[rows], targets[rows] - first_digit, rows, max_shift=max_shift, fill=blank)

    train_rows = train_part_t[train_pos]
    return Splits(
        train=dataset(train_rows, DIGITS_MAX_SHIFT),
        val=dataset(train_part_t[val_pos]),
        test=dataset(test_t),
        info=info,
        train_eval=dataset(train_rows),
    )
