"""Config of the embedded image data sets (torch-free; the data sets live in ``images.py``).

``digits`` is scikit-learn's 8x8 handwritten digits (1797 images, 10 classes); ``sample-images``
cuts scikit-learn's two sample photographs into patches. Both give samples
``{"image": (C, H, W) float in [-1, 1], "label": int}`` and split deterministically.
The data source's ``info`` (modality, channels, height, width, num_classes) enters the build
context when the data set is built; ``bind`` publishes the same values from the config alone, so a
run loaded for generation (no data) still knows them.
"""

from __future__ import annotations

from dataclasses import dataclass
from genloom.core.constraints import Fraction, NonNegativeInt, PositiveInt, Seed


def _publish(ctx, channels: int, side: int, num_classes: int) -> None:
    for key, value in (("modality", "image"), ("channels", channels), ("height", side), ("width", side), ("num_classes", num_classes)):
        ctx.set(key, value)


def _check_split(config) -> None:
    val_fraction, test_fraction = config.val_fraction, config.test_fraction
    if config.batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {config.batch_size}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(f"val_fraction + test_fraction must leave a training split, got {val_fraction} + {test_fraction}")


@dataclass
class ImageDataConfig:
    """Batching fields shared by the image data sets."""

    batch_size: PositiveInt = 64
    """Training batch size (per device)."""
    eval_batch_size: PositiveInt | None = None
    """Validation/test batch size (None: batch_size)."""
    num_workers: NonNegativeInt = 0


@dataclass
class DigitsConfig(ImageDataConfig):
    """scikit-learn's handwritten digits as images in [-1, 1]."""

    image_size: PositiveInt = 8
    """Side of the images; 8 is the native size, larger sizes are upsampled bilinearly (e.g. 16)."""
    val_fraction: Fraction = 0.1
    """Share of each class held out for validation."""
    test_fraction: Fraction = 0.1
    """Share of each class held out for testing."""
    seed: Seed = 0
    """Seed of the stratified split (the split is the same on every machine)."""

    def __post_init__(self):
        if self.image_size < 8:
            raise ValueError(f"image_size must be at least 8 (the native digit size), got {self.image_size}")
        _check_split(self)

    def bind(self, ctx) -> None:
        _publish(ctx, 1, self.image_size, 10)


@dataclass
class SampleImagesConfig(ImageDataConfig):
    """Patches of scikit-learn's two sample photographs (china.jpg, flower.jpg); label 0."""

    patch_size: PositiveInt = 16
    """Side of the square patches."""
    stride: PositiveInt | None = None
    """Step between patches (default: patch_size, no overlap)."""
    downscale: PositiveInt = 4
    """Average-pool the 427x640 photographs by this factor before cutting, so a patch holds a scene, not a texture."""
    grayscale: bool = True
    """One channel (luma) instead of RGB."""
    val_fraction: Fraction = 0.1
    """Share of patches held out for validation."""
    test_fraction: Fraction = 0.1
    """Share of patches held out for testing."""
    seed: Seed = 0
    """Seed of the split."""

    def __post_init__(self):
        if self.patch_size < 2:
            raise ValueError(f"patch_size must be at least 2, got {self.patch_size}")
        if self.stride is not None and self.stride < 1:
            raise ValueError(f"stride must be positive, got {self.stride}")
        if self.downscale < 1:
            raise ValueError(f"downscale must be at least 1, got {self.downscale}")
        if self.patch_size * self.downscale > 427:
            raise ValueError(f"patch_size * downscale must fit in the 427-pixel-high photographs, got {self.patch_size} * {self.downscale}")
        _check_split(self)

    def bind(self, ctx) -> None:
        _publish(ctx, 1 if self.grayscale else 3, self.patch_size, 1)
