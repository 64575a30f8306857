"""Datasets and loaders: digits splits checked against scikit-learn, seeded val carving, loaders that keep every
test sample, one-line errors, and image folders / torchvision sets built from tiny generated files."""

from __future__ import annotations

import struct
import time
import urllib.request

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from spa import data
from spa.data import dataset_names, load_splits, make_loaders, score_loader
from spa.splits import DataError

MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])
DIGITS = load_digits()
# (task, first original digit, expected train / val / test sizes at the task's own val share: 0.1 for the old source,
# 0.25 for the target, whose 0.1 would be 72 images, issue 10)
DIGIT_TASKS = [("digits-source", 0, (649, 72, 180)), ("digits", 5, (538, 179, 179))]
VAL_SHARES = {"digits-source": 0.1, "digits": 0.25}


@pytest.fixture(autouse=True)
def no_downloads(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to download")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


def _reference_render(index: int) -> np.ndarray:
    """Independent rendering with PIL: 8x8 -> 32x32 bilinear in float mode, then ImageNet normalisation."""
    small = Image.fromarray((DIGITS.images[index] / 16.0).astype(np.float32), mode="F")
    big = np.asarray(small.resize((32, 32), Image.BILINEAR), dtype=np.float64)
    return (big[None] - MEAN[:, None, None]) / STD[:, None, None]  # (3, 32, 32)


def _one_line_error(excinfo: pytest.ExceptionInfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and message
    return message


# ---------------------------------------------------------------------------------------------------- digits


def test_dataset_names() -> None:
    names = dataset_names()
    for name in ("digits", "digits-source", "cifar10", "cifar100", "flowers102", "stanford-cars", "fashion-mnist"):
        assert name in names


@pytest.mark.parametrize("task, first, sizes", DIGIT_TASKS)
def test_digits_split_sizes(task: str, first: int, sizes: tuple[int, int, int]) -> None:
    splits = load_splits(task, seed=0)
    n_task = int(np.isin(DIGITS.target, range(first, first + 5)).sum())
    per_class = np.bincount(DIGITS.target)[first : first + 5]
    n_test = sum(round(0.2 * n) for n in per_class)
    n_train_part = n_task - n_test
    assert (len(splits.train), len(splits.val), len(splits.test)) == sizes
    assert len(splits.train) + len(splits.val) + len(splits.test) == n_task
    assert len(splits.test) == n_test
    assert len(splits.val) == round(VAL_SHARES[task] * n_train_part)
    assert splits.info.num_classes == 5 and splits.info.input_size == (3, 32, 32)
    assert splits.info.cifar_stem is False


@pytest.mark.parametrize("task, first, sizes", DIGIT_TASKS)
def test_digits_labels_come_from_the_task_digits(task: str, first: int, sizes) -> None:
    splits = load_splits(task, seed=3)
    for split in (splits.train, splits.val, splits.test):
        original = DIGITS.target[split.source_indices.numpy()]
        assert set(np.unique(original)) == set(range(first, first + 5))
        np.testing.assert_array_equal(split.labels.numpy(), original - first)
        assert set(split.labels.tolist()) == {0, 1, 2, 3, 4}
    # Stratified test split: each original digit keeps round(20 %) of its samples in test.
    test_counts = np.bincount(splits.test.labels.numpy(), minlength=5)
    expected = [round(0.2 * n) for n in np.bincount(DIGITS.target)[first : first + 5]]
    np.testing.assert_array_equal(test_counts, expected)


def test_digits_images_match_an_independent_rendering() -> None:
    splits = load_splits("digits")
    for split in (splits.val, splits.test):
        for position in (0, 7, len(split) - 1):
            image, label = split[position]
            assert image.shape == (3, 32, 32) and image.dtype == torch.float32
            reference = _reference_render(int(split.source_indices[position]))
            np.testing.assert_allclose(image.numpy(), reference, atol=1e-5)
            assert int(label) == DIGITS.target[int(split.source_indices[position])] - 5
    # A blank (0) pixel is -mean/std per channel: the lower LRP z-box bound of ImageNet normalisation.
    lowest = splits.test.images.amin(dim=(0, 2, 3))
    torch.testing.assert_close(lowest, torch.tensor([-2.1179, -2.0357, -1.8044]), atol=1e-4, rtol=0)
    highest = splits.test.images.amax(dim=(0, 2, 3))
    assert torch.all(highest <= torch.tensor((1 - MEAN) / STD, dtype=torch.float32) + 1e-5)
    assert highest[0] > 2.0  # some pixels are near full ink (upper bound 2.2489 for channel 0)


def test_digits_train_augmentation_is_a_small_shift_over_blank() -> None:
    splits = load_splits("digits")
    blank = torch.tensor(-MEAN / STD, dtype=torch.float32).view(3, 1, 1)
    torch.manual_seed(0)
    shifts_seen = set()
    for position in range(40):
        shifted, _ = splits.train[position]
        plain, _ = splits.train_eval[position]
        padded = blank.expand(3, 36, 36).clone()
        padded[:, 2:34, 2:34] = plain
        matches = [
            (dy, dx)
            for dy in range(5)
            for dx in range(5)
            if torch.equal(padded[:, dy : dy + 32, dx : dx + 32], shifted)
        ]
        assert matches, f"train item {position} is not a shift of at most 2 px"
        shifts_seen.update(matches)
    assert len(shifts_seen) > 5  # the shift is random, not constant


def test_val_is_carved_from_train_per_seed_and_test_is_fixed() -> None:
    first, again, other = (load_splits("digits", seed=s) for s in (0, 0, 1))
    train_ids = set(first.train.source_indices.tolist())
    val_ids = set(first.val.source_indices.tolist())
    test_ids = set(first.test.source_indices.tolist())
    assert not train_ids & val_ids and not (train_ids | val_ids) & test_ids
    torch.testing.assert_close(first.val.source_indices, again.val.source_indices)
    torch.testing.assert_close(first.train.source_indices, again.train.source_indices)
    assert set(other.val.source_indices.tolist()) != val_ids
    # Another seed re-carves val from the same training part; test never changes.
    assert set(other.train.source_indices.tolist()) | set(other.val.source_indices.tolist()) == train_ids | val_ids
    torch.testing.assert_close(first.test.source_indices, other.test.source_indices)
    torch.testing.assert_close(first.test.images, other.test.images)
    # The two digit tasks never share a sample.
    source = load_splits("digits-source")
    all_source = torch.cat([source.train.source_indices, source.val.source_indices, source.test.source_indices])
    assert not set(all_source.tolist()) & (train_ids | val_ids | test_ids)


def test_digits_load_fast() -> None:
    data._rendered_digits.cache_clear()
    start = time.perf_counter()
    load_splits("digits")
    assert time.perf_counter() - start < 1.0


def test_val_fraction_is_respected() -> None:
    splits = load_splits("digits", val_fraction=0.1)
    assert (len(splits.train), len(splits.val)) == (645, round(0.1 * (538 + 179)))
    assert len(load_splits("digits", val_fraction=None).val) == len(load_splits("digits").val) == 179
    for bad in (1.0, 0, True, "0.2"):
        with pytest.raises(DataError, match=f"val_fraction={bad!r} is not allowed; allowed: a number in"):
            load_splits("digits", val_fraction=bad)


# --------------------------------------------------------------------------------------------------- loaders


def test_loaders_keep_every_val_and_test_sample() -> None:
    splits = load_splits("digits")
    loaders = make_loaders(splits, batch_size=64, seed=0)
    test_sizes = [len(labels) for _, labels in loaders.test]
    assert test_sizes == [64, 64, 51]  # 179 samples: the partial batch is kept
    assert sum(len(labels) for _, labels in loaders.val) == len(splits.val) == 179
    labels = torch.cat([labels for _, labels in loaders.test])
    torch.testing.assert_close(labels, splits.test.labels)  # in order, no shuffle
    images, _ = next(iter(loaders.test))
    assert images.shape == (64, 3, 32, 32) and images.dtype == torch.float32
    assert loaders.info is splits.info


def test_train_order_is_seeded() -> None:
    splits = load_splits("digits")

    def epoch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        torch.manual_seed(123)  # the shift augmentation draws from torch's global RNG
        loader = make_loaders(splits, batch_size=50, seed=seed).train
        batches = list(loader)
        return torch.cat([b[1] for b in batches]), torch.cat([b[0] for b in batches])

    labels_a, images_a = epoch(0)
    labels_b, images_b = epoch(0)
    labels_c, _ = epoch(1)
    assert len(labels_a) == len(splits.train) == 538
    torch.testing.assert_close(labels_a, labels_b)
    torch.testing.assert_close(images_a, images_b)
    assert not torch.equal(labels_a, labels_c)
    assert not torch.equal(labels_a, splits.train.labels)  # shuffled


@pytest.mark.parametrize("batch_size, drops", [(537, True), (179, True), (64, False), (538, False), (215, False)])
def test_train_drops_only_a_lone_last_sample(batch_size: int, drops: bool) -> None:
    splits = load_splits("digits")  # 538 training samples; 538 % 537 == 538 % 179 == 1
    loader = make_loaders(splits, batch_size=batch_size).train
    assert loader.drop_last is drops
    assert len(loader) == 538 // batch_size + (0 if drops or 538 % batch_size == 0 else 1)


def test_score_loader_is_the_plain_train_set_in_order() -> None:
    splits = load_splits("digits")
    loader = score_loader(splits, batch_size=100)
    labels = torch.cat([labels for _, labels in loader])
    torch.testing.assert_close(labels, splits.train.labels)
    first_images, _ = next(iter(loader))
    np.testing.assert_allclose(
        first_images[0].numpy(), _reference_render(int(splits.train.source_indices[0])), atol=1e-5
    )


# ---------------------------------------------------------------------------------------------------- errors


def test_unknown_dataset_names_the_value_and_the_allowed_ones() -> None:
    with pytest.raises(DataError) as excinfo:
        load_splits("mnist-typo")
    message = _one_line_error(excinfo)
    assert "'mnist-typo'" in message
    for name in (*dataset_names(), "imagefolder:PATH"):
        assert name in message
    assert isinstance(excinfo.value, ValueError)


def test_missing_data_dir_is_named(tmp_path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError) as excinfo:
        load_splits("cifar10", data_dir=str(missing))
    assert str(missing) in _one_line_error(excinfo)
    assert not missing.exists()


@pytest.mark.parametrize(
    "name, folder",
    [
        ("cifar10", "cifar-10-batches-py"),
        ("cifar100", "cifar-100-python"),
        ("fashion-mnist", "FashionMNIST/raw"),
        ("flowers102", "flowers-102"),
        ("stanford-cars", "stanford_cars"),
    ],
)
def test_missing_dataset_offline_says_where_to_put_it(tmp_path, name: str, folder: str) -> None:
    with pytest.raises(DataError) as excinfo:
        load_splits(name, data_dir=tmp_path)
    message = _one_line_error(excinfo)
    assert f"'{name}'" in message
    assert str(tmp_path / folder) in message
    if name != "stanford-cars":
        assert "--download" in message
    assert list(tmp_path.iterdir()) == []  # nothing created, nothing downloaded


def test_default_data_dir_follows_the_environment(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("SPA_DATA_DIR", str(tmp_path))
    assert data.default_data_dir() == tmp_path
    with pytest.raises(DataError, match=str(tmp_path / "cifar-10-batches-py")):
        load_splits("cifar10")


# -------------------------------------------------------------------------------------- files made on the spot


def _write_pngs(folder, count: int, color: tuple[int, int, int], size=(40, 30)) -> None:
    folder.mkdir(parents=True)
    for i in range(count):
        Image.new("RGB", size, tuple(min(255, c + 10 * i) for c in color)).save(folder / f"{i}.png")


def test_imagefolder_flat_is_split_80_20(tmp_path) -> None:
    _write_pngs(tmp_path / "cats", 5, (200, 10, 10))
    _write_pngs(tmp_path / "dogs", 5, (10, 10, 200))
    splits = load_splits(f"imagefolder:{tmp_path}", seed=0)
    assert splits.info.num_classes == 2 and splits.info.input_size == (3, 224, 224)
    assert splits.info.cifar_stem is False
    assert (len(splits.train), len(splits.val), len(splits.test)) == (7, 1, 2)
    assert sorted(label for _, label in (splits.test[i] for i in range(2))) == [0, 1]  # stratified
    image, _ = splits.val[0]
    assert image.shape == (3, 224, 224) and image.dtype == torch.float32
    torch.testing.assert_close(image, splits.val[0][0])  # eval transforms: deterministic
    assert splits.train[0][0].shape == (3, 224, 224)
    # A different seed re-carves val but keeps the test files.
    other = load_splits(f"imagefolder:{tmp_path}", seed=5)
    assert other.test.base.indices == splits.test.base.indices


def test_imagefolder_uses_train_and_test_subfolders(tmp_path) -> None:
    for split, count in (("train", 6), ("test", 3)):
        _write_pngs(tmp_path / split / "a", count, (0, 100, 0))
        _write_pngs(tmp_path / split / "b", count, (100, 0, 0))
        _write_pngs(tmp_path / split / "c", count, (0, 0, 100))
    splits = load_splits(f"imagefolder:{tmp_path}")
    assert splits.info.num_classes == 3
    assert len(splits.test) == 9 and len(splits.train) + len(splits.val) == 18 and len(splits.val) == 2
    loaders = make_loaders(splits, batch_size=4)
    assert [len(labels) for _, labels in loaders.test] == [4, 4, 1]


def test_imagefolder_errors_are_one_line(tmp_path) -> None:
    with pytest.raises(DataError) as excinfo:
        load_splits(f"imagefolder:{tmp_path / 'absent'}")
    assert str(tmp_path / "absent") in _one_line_error(excinfo)
    _write_pngs(tmp_path / "only" / "one", 3, (0, 0, 0))
    with pytest.raises(DataError) as excinfo:
        load_splits(f"imagefolder:{tmp_path / 'only'}")
    assert "need at least 2" in _one_line_error(excinfo)


def _write_idx(path, array: np.ndarray) -> None:
    # The MNIST "idx" format: magic (0, 0, 0x08 = uint8, number of dims), then each dim as big-endian int32.
    path.write_bytes(
        struct.pack(">BBBB", 0, 0, 8, array.ndim)
        + struct.pack(f">{array.ndim}i", *array.shape)
        + array.astype(np.uint8).tobytes()
    )


def test_fashion_mnist_from_local_files(tmp_path) -> None:
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 30), ("t10k", 7)):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)
    splits = load_splits("fashion-mnist", data_dir=tmp_path, seed=0)
    assert splits.info.num_classes == 10 and splits.info.cifar_stem is True
    assert (len(splits.train), len(splits.val), len(splits.test)) == (27, 3, 7)
    assert not set(splits.train.indices) & set(splits.val.indices)
    image, label = splits.val[0]
    assert image.shape == (3, 32, 32) and label == splits.val.indices[0] % 10
    # Grayscale copied to 3 channels: undoing the normalisation gives the same g in each channel, and the
    # 2-px padding (28 -> 32 px) is black.
    std, mean = (torch.tensor(v, dtype=torch.float32).view(3, 1, 1) for v in (STD, MEAN))
    gray = image * std + mean
    torch.testing.assert_close(gray[0], gray[1])
    assert torch.all(gray[:, :2, :].abs() < 1e-6)
    loaders = make_loaders(splits, batch_size=3)
    assert [len(labels) for _, labels in loaders.test] == [3, 3, 1]
    other = load_splits("fashion-mnist", data_dir=tmp_path, seed=1)
    assert other.val.indices != splits.val.indices


def write_cifar10(root, per_batch: int) -> np.ndarray:
    """A small CIFAR-10 in torchvision's layout (``cifar-10-batches-py``: pickled dicts, ``data`` N x 3072 uint8 in
    channel-major order, ``labels``); returns the test images as (N, 32, 32, 3)."""
    import pickle

    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        images = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [int(i) % 10 for i in range(per_batch)]
        (folder / name).write_bytes(pickle.dumps({"batch_label": name, "labels": labels, "data": images}))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"class{i}" for i in range(10)]}))
    return images.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


def test_cifar10_from_local_files_and_refused_when_not_the_original(tmp_path, monkeypatch) -> None:
    import hashlib

    from torchvision.datasets import CIFAR10

    from spa.splits import DatasetFilesError

    test_images = write_cifar10(tmp_path, per_batch=8)
    folder = tmp_path / "cifar-10-batches-py"
    # torchvision checks each file's md5 against the original's: hand-made files are refused, with what is wrong
    # (it said "not found" and suggested --download, over files that were there).
    with pytest.raises(DatasetFilesError) as excinfo:
        load_splits("cifar10", data_dir=tmp_path)
    assert _one_line_error(excinfo) == (
        f"dataset 'cifar10' at '{folder}' is incomplete or not the original files (torchvision: Dataset not found or "
        "corrupted. You can use download=True to download it); put the original files there or pass --download "
        "(download=True)"
    )
    md5 = {path.name: hashlib.md5(path.read_bytes()).hexdigest() for path in folder.iterdir()}
    monkeypatch.setattr(CIFAR10, "train_list", [[f"data_batch_{i}", md5[f"data_batch_{i}"]] for i in range(1, 6)])
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", md5["test_batch"]]])
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": md5["batches.meta"]})
    splits = load_splits("cifar10", data_dir=tmp_path, seed=0)
    assert splits.info.num_classes == 10 and splits.info.cifar_stem is True
    assert (len(splits.train), len(splits.val), len(splits.test)) == (36, 4, 8)
    std, mean = (torch.tensor(v, dtype=torch.float32).view(3, 1, 1) for v in (STD, MEAN))
    for index in (0, 5):
        image, label = splits.test[index]
        assert label == index % 10
        pixels = torch.from_numpy(test_images[index]).permute(2, 0, 1).float() / 255  # (3, 32, 32)
        torch.testing.assert_close(image * std + mean, pixels, rtol=0, atol=1e-6)
