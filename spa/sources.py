"""An offline source task for transfer: printed digits rendered on the fly with the fonts inside matplotlib.

The target task (``digits``) is scikit-learn's handwritten digits 5-9. Those were made (UCI optdigits) by scaling
each digit to a 32x32 binary bitmap and counting the set pixels in each 4x4 block, giving 8x8 images of levels
0..16. This module makes printed digits 0-9 the same way: a glyph of one of the TrueType fonts that ship with
matplotlib (DejaVu, STIX, Computer Modern; so nothing downloads), drawn with FreeType, scaled to the bitmap's
height, randomly rotated, sheared, squeezed, shifted and thickened (pens are thicker than type), binarised,
block-counted to 8x8, and then rendered exactly as the target digits are (bilinear to 32x32, 3 channels,
ImageNet mean/std). A backbone pretrained on these learns stroke features from many fonts: a
synthetic-to-real transfer, the way ImageNet-pretrained networks are transferred to real tasks.

``printed-digits``: 10 classes (0..9); ``SOURCE_SAMPLES`` training images, a fixed-seed val and test set.
Samples are generated once per (count, seed) from a seeded generator, so every run sees the same images.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from spa.digits import DigitsDataset, blank_pixel, upsample_digits
from spa.splits import DatasetInfo, Splits

__all__ = ["PRINTED_DIGITS", "FONT_FILES", "glyph_bitmaps", "render_printed_digits", "printed_digits_splits"]

PRINTED_DIGITS = "printed-digits"
# Text faces only (no symbol fonts): sans, mono, serif, each regular/bold/italic, and Computer Modern.
FONT_FILES = (
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSans-Oblique.ttf",
    "DejaVuSans-BoldOblique.ttf",
    "DejaVuSansMono.ttf",
    "DejaVuSansMono-Bold.ttf",
    "DejaVuSansMono-Oblique.ttf",
    "DejaVuSansMono-BoldOblique.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf",
    "DejaVuSerif-Italic.ttf",
    "DejaVuSerif-BoldItalic.ttf",
    "STIXGeneral.ttf",
    "STIXGeneralBol.ttf",
    "STIXGeneralItalic.ttf",
    "STIXGeneralBolIta.ttf",
    "cmr10.ttf",
    "cmss10.ttf",
    "cmtt10.ttf",
    "cmb10.ttf",
    "cmti10.ttf",
)
CHARACTERS = "0123456789"
BITMAP = 32  # px: the optdigits bitmap, block-counted 4x4 to 8x8
SOURCE_SAMPLES = 4_000  # training images; the pretraining recipe (spa.pretrain) counts epochs over them
SOURCE_VAL = 1_000
SOURCE_TEST = 1_000
_VAL_SEED, _TEST_SEED = 1_000_001, 1_000_002  # fixed: val and test never change with the run seed


def _font_directory() -> Path:
    import matplotlib  # local: only the source task needs it

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


@functools.lru_cache(maxsize=1)
def glyph_bitmaps() -> tuple[torch.Tensor, torch.Tensor]:
    """Every (font, character) glyph, anti-aliased, its height scaled to the bitmap and centred.

    Returns images (G, 1, 32, 32) float32 in 0..1 and labels (G,) int64 (the digit).
    """
    from matplotlib.ft2font import FT2Font

    images, labels = [], []
    for name in FONT_FILES:
        font = FT2Font(str(_font_directory() / name))
        font.set_size(96, 72)  # large, then scaled down: smooth edges at 32 px
        for label, character in enumerate(CHARACTERS):
            font.set_text(character, 0.0)
            font.draw_glyphs_to_bitmap(antialiased=True)
            glyph = torch.from_numpy(np.asarray(font.get_image(), dtype=np.float32) / 255.0)
            rows, cols = glyph.amax(1) > 0.05, glyph.amax(0) > 0.05
            row_ink, col_ink = rows.nonzero(), cols.nonzero()
            glyph = glyph[row_ink.min() : row_ink.max() + 1, col_ink.min() : col_ink.max() + 1]
            height, width = glyph.shape
            scale = BITMAP / max(height, width * BITMAP / (0.9 * BITMAP))  # full height, at most 90 % wide
            size = (max(1, round(height * scale)), max(1, round(width * scale)))
            small = F.interpolate(glyph[None, None], size=size, mode="area")[0, 0]
            canvas = torch.zeros(BITMAP, BITMAP)
            top, left = (BITMAP - size[0]) // 2, (BITMAP - size[1]) // 2
            canvas[top : top + size[0], left : left + size[1]] = small
            images.append(canvas)
            labels.append(label)
    return torch.stack(images).unsqueeze(1), torch.tensor(labels, dtype=torch.int64)


def render_printed_digits(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` random printed digits as 8x8 optdigits-style images: (count, 8, 8) float32 in 0..1, labels.

    Per sample: a random font, rotation +-12 deg, shear +-0.25, width 60-100 %, height 85-100 %, shift +-2 px,
    then stroke thickening by 0-2 px (pens are thicker than type) before binarising and 4x4 block counting.
    """
    glyphs, glyph_labels = glyph_bitmaps()
    generator = torch.Generator().manual_seed(seed)
    classes = len(CHARACTERS)
    labels = torch.arange(count) % classes  # balanced classes
    fonts = torch.randint(0, len(FONT_FILES), (count,), generator=generator)
    chosen = fonts * classes + labels
    assert torch.equal(glyph_labels[chosen], labels)

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(count, generator=generator)

    angle = uniform(-12, 12) * math.pi / 180
    shear = uniform(-0.25, 0.25)
    sx, sy = uniform(0.60, 1.0), uniform(0.85, 1.0)
    tx, ty = uniform(-2, 2) * 2 / BITMAP, uniform(-2, 2) * 2 / BITMAP
    cos, sin = torch.cos(angle), torch.sin(angle)
    # Output -> input coordinates (affine_grid's convention): inverse of rotate @ shear @ scale.
    forward = torch.zeros(count, 2, 2)
    forward[:, 0, 0], forward[:, 0, 1] = cos * sx, (cos * shear - sin) * sy
    forward[:, 1, 0], forward[:, 1, 1] = sin * sx, (sin * shear + cos) * sy
    inverse = torch.linalg.inv(forward)
    theta = torch.cat([inverse, -(inverse @ torch.stack([tx, ty], 1).unsqueeze(2))], dim=2)  # (count, 2, 3)
    thickness = torch.randint(0, 3, (count,), generator=generator)
    out = torch.empty(count, 8, 8)
    for start in range(0, count, 2048):  # in chunks: bounded memory
        part = slice(start, start + 2048)
        grid = F.affine_grid(theta[part], [len(theta[part]), 1, BITMAP, BITMAP], align_corners=False)
        warped = F.grid_sample(glyphs[chosen[part]], grid, mode="bilinear", align_corners=False)
        thick = warped
        for step in range(1, 3):  # dilate by `step` px where the sample asks for at least that much
            grown = F.max_pool2d(warped, 2 * step + 1, stride=1, padding=step)
            thick = torch.where((thickness[part] >= step).view(-1, 1, 1, 1), grown, thick)
        binary = (thick > 0.5).float()
        out[part] = torch.round(F.avg_pool2d(binary, 4) * 16)[:, 0] / 16  # 0..16 levels, as optdigits
    return out, labels


def printed_digits_splits(info: DatasetInfo, *, seed: int, train_samples: int = SOURCE_SAMPLES) -> Splits:
    """Splits of the printed-digits source: ``train_samples`` training images (``seed``-ed), fixed val and test.

    Val is a generated set of its own (fixed seed), not carved from train: the source is generated, not sampled.
    """
    blank = blank_pixel()

    def dataset(count: int, sample_seed: int) -> DigitsDataset:
        raw, labels = render_printed_digits(count, sample_seed)
        return DigitsDataset(upsample_digits(raw), labels, torch.arange(count), fill=blank)

    train = dataset(train_samples, seed)
    return Splits(
        train=train,
        val=dataset(SOURCE_VAL, _VAL_SEED),
        test=dataset(SOURCE_TEST, _TEST_SEED),
        info=info,
        train_eval=train,
    )
