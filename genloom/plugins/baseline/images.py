"""Embedded image data sets: scikit-learn's digits and sample photographs (no downloads).

Each factory returns an :class:`ImageData` whose ``load(split, tokenizer, ctx)`` gives a torch
``Dataset`` of ``{"image": (C, H, W) float32 in [-1, 1], "label": int}`` and whose ``info`` says
what the images are. Images are not tokenized here: image tokenizers are usually trainable and
run inside the model (the objective encodes a batch), so ``tokenizer`` is accepted and unused.
Splits are deterministic (a seeded, per-class permutation).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from genloom.core.data import DataSource
from genloom.plugins.baseline.images_config import DigitsConfig, ImageDataConfig, SampleImagesConfig

SPLITS = ("train", "val", "test")


class ImageDataset(torch.utils.data.Dataset):
    """In-memory images and labels."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"image": self.images[index], "label": int(self.labels[index])}


class ImageData(DataSource):
    """A data set of images with fixed splits: ``info`` and ``load(split, tokenizer, ctx)``."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, splits: dict[str, np.ndarray], num_classes: int, name: str, config: ImageDataConfig | None = None):
        channels, height, width = images.shape[1:]
        config = config or ImageDataConfig()
        self.batch_size = config.batch_size
        self.eval_batch_size = config.eval_batch_size
        self.num_workers = config.num_workers
        self.images = images
        self.labels = labels
        self.splits = splits
        self.info = {"modality": "image", "channels": channels, "height": height, "width": width, "num_classes": num_classes}
        self.name = name

    def load(self, split: str, tokenizer=None, ctx=None) -> ImageDataset:
        if split not in self.splits:
            raise ValueError(f"unknown split '{split}' (known: {', '.join(SPLITS)})")
        index = torch.as_tensor(self.splits[split], dtype=torch.long)
        return ImageDataset(self.images[index], self.labels[index])


def stratified_split(labels: np.ndarray, val_fraction: float, test_fraction: float, seed: int) -> dict[str, np.ndarray]:
    """Per-class seeded permutation; each class gives round(n * fraction) samples to val and to test."""
    rng = np.random.RandomState(seed)
    parts: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_val = int(round(len(members) * val_fraction))
        n_test = int(round(len(members) * test_fraction))
        parts["val"].append(members[:n_val])
        parts["test"].append(members[n_val:n_val + n_test])
        parts["train"].append(members[n_val + n_test:])
    return {s: np.sort(np.concatenate(p)) for s, p in parts.items()}


def digits_tensor(image_size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """All 1797 digits as (N, 1, S, S) float32 in [-1, 1] and their labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 8.0 - 1.0  # pixel values 0..16
    if image_size != images.shape[-1]:
        images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", align_corners=False).clamp(-1.0, 1.0)
    return images, torch.tensor(digits.target, dtype=torch.long)


def build_digits(config: DigitsConfig, ctx=None) -> ImageData:
    images, labels = digits_tensor(config.image_size)
    splits = stratified_split(labels.numpy(), config.val_fraction, config.test_fraction, config.seed)
    return ImageData(images, labels, splits, num_classes=10, name="digits", config=config)


def _sample_photographs() -> list[np.ndarray]:
    try:
        from sklearn.datasets import load_sample_images
    except ImportError as error:  # pragma: no cover - scikit-learn is a dependency
        raise ImportError("the sample-images data set needs scikit-learn") from error
    try:
        return list(load_sample_images().images)
    except ImportError as error:
        raise ImportError("the sample-images data set needs Pillow to read scikit-learn's JPEG photographs: pip install pillow") from error


def build_sample_images(config: SampleImagesConfig, ctx=None) -> ImageData:
    patches = []
    stride = config.stride or config.patch_size
    for photo in _sample_photographs():
        image = torch.tensor(photo, dtype=torch.float32).permute(2, 0, 1)[None] / 127.5 - 1.0  # (1, 3, H, W)
        if config.grayscale:
            image = (0.299 * image[:, 0:1] + 0.587 * image[:, 1:2] + 0.114 * image[:, 2:3])
        if config.downscale > 1:
            image = F.avg_pool2d(image, config.downscale)
        cut = F.unfold(image, kernel_size=config.patch_size, stride=stride)  # (1, C*P*P, n)
        patches.append(cut[0].T.reshape(-1, image.shape[1], config.patch_size, config.patch_size))
    images = torch.cat(patches).contiguous()
    labels = torch.zeros(images.shape[0], dtype=torch.long)
    splits = stratified_split(labels.numpy(), config.val_fraction, config.test_fraction, config.seed)
    return ImageData(images, labels, splits, num_classes=1, name="sample-images", config=config)
