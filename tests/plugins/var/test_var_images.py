"""Embedded image data sets (digits, sample-images) and the PNG grid writer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from genloom.core.context import BuildContext
from genloom.plugins.baseline.images import build_digits, build_sample_images, stratified_split
from genloom.plugins.baseline.images_config import DigitsConfig, SampleImagesConfig
from genloom.plugins.var.grid import make_grid, read_png, save_grid


@pytest.fixture(scope="module")
def digits():
    return build_digits(DigitsConfig())


def test_digits_samples_range_and_info(digits):
    train = digits.load("train")
    sample = train[0]
    assert sample["image"].shape == (1, 8, 8) and sample["image"].dtype == torch.float32
    assert isinstance(sample["label"], int) and 0 <= sample["label"] < 10
    images = train.images
    assert images.min() == -1.0 and images.max() == 1.0  # 0..16 mapped onto [-1, 1]
    assert digits.info == {"modality": "image", "channels": 1, "height": 8, "width": 8, "num_classes": 10}


def test_digits_split_is_disjoint_complete_stratified_and_deterministic(digits):
    splits = digits.splits
    everything = np.concatenate([splits[s] for s in ("train", "val", "test")])
    assert len(everything) == 1797 and len(np.unique(everything)) == 1797
    labels = digits.labels.numpy()
    for split, fraction in (("val", 0.1), ("test", 0.1)):
        counts = np.bincount(labels[splits[split]], minlength=10)
        expected = np.round(np.bincount(labels, minlength=10) * fraction)
        assert np.array_equal(counts, expected), split
    again = build_digits(DigitsConfig())
    assert all(np.array_equal(splits[s], again.splits[s]) for s in splits)
    other = stratified_split(labels, 0.1, 0.1, seed=1)
    assert not np.array_equal(other["val"], splits["val"])


def test_digits_upsampled_to_16(digits):
    big = build_digits(DigitsConfig(image_size=16, batch_size=8))
    image = big.load("val")[0]["image"]
    assert image.shape == (1, 16, 16) and image.min() >= -1.0 and image.max() <= 1.0
    assert big.batch_size == 8 and big.info["height"] == 16
    # bilinear upsampling keeps the mean brightness of each image close to the original
    small = digits.load("val")[0]["image"]
    assert abs(float(image.mean() - small.mean())) < 0.05


def test_config_bind_publishes_what_info_says():
    ctx = BuildContext()
    DigitsConfig(image_size=16).bind(ctx)
    assert (ctx.channels, ctx.height, ctx.width, ctx.num_classes, ctx.modality) == (1, 16, 16, 10, "image")
    with pytest.raises(ValueError, match="image_size"):
        DigitsConfig(image_size=4)
    with pytest.raises(ValueError, match="val_fraction"):
        DigitsConfig(val_fraction=0.6, test_fraction=0.5)
    with pytest.raises(ValueError, match="patch_size"):
        SampleImagesConfig(patch_size=200, downscale=4)


def test_sample_images_patches():
    pytest.importorskip("PIL", reason="scikit-learn reads its sample photographs with Pillow")
    data = build_sample_images(SampleImagesConfig(patch_size=16, downscale=4, grayscale=True))
    train = data.load("train")
    assert train[0]["image"].shape == (1, 16, 16) and train[0]["label"] == 0
    n = sum(len(data.load(s)) for s in ("train", "val", "test"))
    assert n == 2 * (427 // 4 // 16) * (640 // 4 // 16)
    rgb = build_sample_images(SampleImagesConfig(patch_size=8, grayscale=False))
    assert rgb.info["channels"] == 3 and float(rgb.images.min()) >= -1.0 and float(rgb.images.max()) <= 1.0


def test_png_grid_round_trip(tmp_path):
    torch.manual_seed(0)
    images = torch.rand(5, 1, 4, 6) * 2 - 1
    path = save_grid(images, tmp_path / "grid.png", nrow=3, scale=1)
    pixels = read_png(path)
    assert pixels.shape == (2 * 5 + 1, 3 * 7 + 1)  # 2 rows x 3 columns of 4x6 cells, 1-pixel borders
    expected = ((images[4, 0] + 1) / 2 * 255).round().to(torch.uint8)
    assert torch.equal(pixels[6:10, 8:14], expected)  # the fifth image: row 1, column 1
    assert torch.equal(pixels, make_grid(images, 3, scale=1))
    rgb = torch.rand(2, 3, 4, 4)
    # small images are enlarged (nearest) to at least 32 pixels: 4x4 -> 32x32 cells
    assert read_png(save_grid(rgb, tmp_path / "rgb.png", nrow=2, value_range=(0, 1))).shape == (34, 67, 3)
