"""The printed-digits source: glyphs from matplotlib's fonts, rendered like scikit-learn's optdigits."""

from __future__ import annotations

import torch

from spa import sources
from spa.data import load_splits


def test_every_font_renders_every_digit() -> None:
    images, labels = sources.glyph_bitmaps()
    assert images.shape == (len(sources.FONT_FILES) * 10, 1, 32, 32)
    assert labels.tolist() == list(range(10)) * len(sources.FONT_FILES)
    # each glyph fills the bitmap's height, as optdigits scales each digit to its box
    rows = (images[:, 0] > 0.5).any(2)
    assert rows.sum(1).float().mean() >= 28


def test_samples_are_seeded_balanced_and_in_optdigits_levels() -> None:
    images, labels = sources.render_printed_digits(200, seed=3)
    again, _ = sources.render_printed_digits(200, seed=3)
    other, _ = sources.render_printed_digits(200, seed=4)
    assert images.shape == (200, 8, 8) and torch.equal(images, again) and not torch.equal(images, other)
    assert torch.bincount(labels).tolist() == [20] * 10
    assert torch.equal(images * 16, torch.round(images * 16)) and 0 <= images.min() and images.max() <= 1
    assert 0.2 < images.mean() < 0.45  # ink like the handwritten digits' 0.31, not blobs


def test_printed_digits_is_a_registered_dataset() -> None:
    splits = load_splits(sources.PRINTED_DIGITS, seed=0)
    assert splits.info.num_classes == 10 and splits.train[0][0].shape == (3, 32, 32)
    assert len(splits.train) == sources.SOURCE_SAMPLES
    assert (len(splits.val), len(splits.test)) == (sources.SOURCE_VAL, sources.SOURCE_TEST)
