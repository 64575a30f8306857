"""The training order and each training sample's augmentation seed: the same with any number of loader workers.

A ``DataLoader`` with workers augments in the workers, each with its own RNG seeded once when the worker starts;
persistent workers are never re-seeded, so the draws of an epoch would depend on every epoch before it and an
experiment resumed from a checkpoint would see other augmentations than an uninterrupted one. Here the sampler
draws, with the order, one seed per sample, and ``SeededSamples`` seeds torch's CPU generator with it right before
the sample is transformed: a sample's augmentation is a function of the epoch's seed and its position alone, in
the trial's process or in any worker.

Both come from the loader's generator, which ``spa.training._reseed`` re-seeds at the start of every epoch: the
sampler reads the seed it was given (``initial_seed``), not its current state, because a ``DataLoader`` draws from
it a different number of times with and without (persistent) workers.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Dataset, Sampler

__all__ = ["SeededOrder", "SeededSamples"]

_SEED_BOUND = 2**62


class SeededOrder(Sampler[tuple[int, int]]):
    """A random order of ``range(size)`` as ``(index, seed)`` pairs, drawn from ``generator``'s seed.

    Each epoch also moves ``generator`` on to a seed drawn from the same stream, so a loader iterated again without
    being re-seeded gets a new order, as a ``RandomSampler``'s would.
    """

    def __init__(self, size: int, generator: torch.Generator) -> None:
        self.size = size
        self.generator = generator

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        stream = torch.Generator().manual_seed(self.generator.initial_seed())
        order = torch.randperm(self.size, generator=stream).tolist()
        seeds = torch.randint(0, _SEED_BOUND, (self.size,), generator=stream).tolist()
        self.generator.manual_seed(int(torch.randint(0, _SEED_BOUND, (), generator=stream)))
        return iter(zip(order, seeds, strict=True))


class SeededSamples(Dataset):
    """``dataset`` indexed by ``(index, seed)``: torch's CPU generator is seeded with ``seed``, then
    ``dataset[index]`` is drawn (its random transforms draw from that generator)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, pair: tuple[int, int]):
        index, seed = pair
        torch.default_generator.manual_seed(seed)  # 1 us; torch.manual_seed would also seed every CUDA device
        return self.dataset[index]
