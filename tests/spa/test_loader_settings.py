"""The loaders' settings per (device, CPUs, dataset), and loaders with workers giving the same batches as without."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from spa.config import ConfigError
from spa.data import load_splits, make_loaders, score_loader
from spa.loader_settings import LoaderSettings, loader_settings
from spa.training import _reseed

FILES = ("imagefolder:/data/cats-dogs", "flowers102", "stanford-cars")
IN_MEMORY = ("digits", "cifar10", "cifar100", "fashion-mnist", "printed-digits")


@pytest.mark.parametrize("dataset", FILES)
@pytest.mark.parametrize(("cpus", "workers"), [(1, 0), (2, 1), (4, 3), (16, 15)])
def test_image_files_on_a_gpu_get_all_but_one_cpu_as_persistent_pinned_workers(dataset, cpus, workers) -> None:
    assert loader_settings("cuda", cpus, dataset) == LoaderSettings(
        num_workers=workers, pin_memory=True, persistent_workers=workers > 0
    )


@pytest.mark.parametrize("dataset", IN_MEMORY)
def test_in_memory_sets_on_a_gpu_get_no_workers_but_pinned_memory(dataset) -> None:
    assert loader_settings("cuda", 4, dataset) == LoaderSettings(0, True, False)


@pytest.mark.parametrize("dataset", FILES + IN_MEMORY)
def test_cpu_runs_keep_no_workers_and_no_pinning(dataset) -> None:
    assert loader_settings("cpu", 4, dataset) == LoaderSettings(0, False, False)


def test_an_explicit_worker_count_wins_everywhere() -> None:
    assert loader_settings("cpu", 4, "digits", num_workers=2) == LoaderSettings(2, False, True)
    assert loader_settings("cuda", 8, "flowers102", num_workers=0) == LoaderSettings(0, True, False)


@pytest.mark.parametrize(("cpus", "workers"), [(0, None), (2.5, None), (2, -1), (2, 1.5)])
def test_impossible_counts_are_refused(cpus, workers) -> None:
    with pytest.raises(ConfigError, match="is not allowed"):
        loader_settings("cuda", cpus, "flowers102", num_workers=workers)


def _image_folder(root, classes: int = 2, per_class: int = 7) -> str:
    """A class-per-folder set of small random RGB images, as ``imagefolder:PATH`` expects."""
    rng = np.random.default_rng(0)
    for label in range(classes):
        folder = root / f"class{label}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (40 + 3 * i, 36, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{i}.png")
    return f"imagefolder:{root}"


def _epochs(loader, seeds: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Every batch of one epoch per seed, re-seeded as ``spa.training.train_one_epoch`` does."""
    batches = []
    for seed in seeds:
        _reseed(loader, seed)
        batches += [(images.clone(), labels.clone()) for images, labels in loader]
    return batches


def test_workers_yield_the_same_images_in_the_same_seeded_order(tmp_path) -> None:
    splits = load_splits(_image_folder(tmp_path), val_fraction=0.2, seed=3)
    # Epoch seeds 5, 6 then 5 again: a persistent worker must not carry its RNG from one epoch into the next.
    seeds = [5, 6, 5]
    without = _epochs(make_loaders(splits, batch_size=4, num_workers=0, seed=3).train, seeds)
    loaders = make_loaders(splits, batch_size=4, num_workers=1, seed=3)
    assert loaders.train.persistent_workers and loaders.train.num_workers == 1
    with_worker = _epochs(loaders.train, seeds)
    assert len(with_worker) == len(without) == 3 * 3  # 11 training images in batches of 4 (last of 3), 3 epochs
    for (images, labels), (expected_images, expected_labels) in zip(with_worker, without, strict=True):
        assert torch.equal(labels, expected_labels)
        assert torch.equal(images, expected_images)  # augmentation seeded per sample: same crops and flips
    first, again = with_worker[:3], with_worker[6:]
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, again, strict=True))  # seed 5 twice: same epoch
    assert not torch.equal(with_worker[0][0], with_worker[3][0])  # seed 6: another epoch
    # Scoring and evaluation: every sample, in order, eval transforms.
    score = [b for b in score_loader(splits, batch_size=4, num_workers=1)]
    expected = [b for b in score_loader(splits, batch_size=4, num_workers=0)]
    assert all(torch.equal(a[0], e[0]) and torch.equal(a[1], e[1]) for a, e in zip(score, expected, strict=True))
    val = [b[0] for b in loaders.val]
    assert all(torch.equal(a, e[0]) for a, e in zip(val, make_loaders(splits, batch_size=4, seed=3).val, strict=True))
