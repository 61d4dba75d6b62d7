"""Config of the raster-order image AR setting (torch-free, so listing plugins stays light).

The runtime lives in :mod:`genloom.toolkit.image_ar`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from genloom.core.constraints import Fraction, PositiveInt

#: The default quantizer: VAR's ``var-vq`` autoencoder with one scale, i.e. a plain VQ-VAE over a
#: 4x4 latent of an 8x8 digit (16 tokens per image, 32 codes).
DEFAULT_QUANTIZER: dict[str, Any] = {"name": "var-vq", "scales": [4], "codebook_size": 32, "latent_channels": 8, "hidden_channels": 32, "fit_steps": 300}


@dataclasses.dataclass
class RasterVQConfig:
    """Raster-order image tokens: a single-scale VQ quantizer plus one start token per class."""

    quantizer: dict[str, Any] = dataclasses.field(default_factory=lambda: dict(DEFAULT_QUANTIZER))
    """The VQ tokenizer node built through the registry (any tokenizer whose ``encode(images)``
    gives a list holding one (B, h*w) id tensor, with ``decode_ids``, ``codebook`` and ``fit``;
    ``var-vq`` with a single scale is one). Its codebook is the latent space of the image tokens."""
    num_classes: PositiveInt | None = None
    """Class start tokens appended after the codebook (ids ``V .. V + num_classes - 1``); None:
    the data set's ``num_classes``."""
    quantizer_from: str | None = None
    """A run directory (or its ``tokenizer/`` folder) whose fitted quantizer and classes to load,
    so that a draft model shares its target's codebook; None fits a quantizer of its own."""

    def __post_init__(self):
        if not isinstance(self.quantizer, dict) or "name" not in self.quantizer:
            raise ValueError(f"quantizer must be a tokenizer node {{name: ..., <fields>}}, got {self.quantizer!r}")
        scales = self.quantizer.get("scales")
        if scales is not None and len(scales) != 1:
            raise ValueError(f"quantizer.scales must hold one scale (raster-order tokens of one latent map), got {list(scales)}")
        if self.quantizer_from is not None and not isinstance(self.quantizer_from, str):
            raise ValueError(f"quantizer_from must be a run directory path, got {type(self.quantizer_from).__name__}")


@dataclasses.dataclass
class RasterNextTokenConfig:
    """Next-token prediction over [class token, raster-order image tokens]."""

    label_smoothing: Fraction = 0.0
    """Label smoothing of the cross-entropy over image tokens."""
