"""Config of the raster-order pixel objective (torch-free: plugin records name it)."""

from __future__ import annotations

from dataclasses import dataclass

from genloom.core.constraints import PositiveInt


@dataclass
class RasterPixelsConfig:
    """Autoregressive pixels in raster order: quantised intensities as tokens, next-pixel
    cross-entropy, bits per dimension."""

    levels: PositiveInt = 17
    """Intensity levels: pixels in [-1, 1] become tokens 0 .. levels - 1 (digits has 17 values)."""

    def __post_init__(self):
        if self.levels < 2:
            raise ValueError(f"levels must be at least 2, got {self.levels}")

    def bind(self, ctx):
        """Reserve the start token and publish the raster's row width (``raster_width``: image
        width times channels, channels innermost) when the data set says what its images are."""
        ctx.add_special_token("image_start")
        width, channels = ctx.get("width"), ctx.get("channels")
        if width is not None:
            ctx.setdefault("raster_width", int(width) * int(channels or 1))
