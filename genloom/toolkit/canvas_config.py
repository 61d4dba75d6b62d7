"""Config of masked-canvas decoders (torch-free, so listing plugins stays light).

The runtime lives in :mod:`genloom.toolkit.canvas`.
"""

from __future__ import annotations

import dataclasses
from genloom.core.constraints import NonNegativeFloat, PositiveInt


@dataclasses.dataclass
class CanvasDecoderConfig:
    """Base config of masked-canvas decoders (see ``genloom.toolkit.canvas``); reserves the mask token."""

    steps: PositiveInt | None = None
    """Unmasking steps (None: one token per step, i.e. max_new_tokens steps)."""
    block_length: PositiveInt | None = None
    """Decode the canvas in blocks of this many tokens, left to right (None: one block)."""
    temperature: NonNegativeFloat = 0.0
    """0: predict the argmax token; > 0: draw it with Gumbel noise at this temperature."""

    def __post_init__(self):
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps must be at least 1, got {self.steps}")
        if self.block_length is not None and self.block_length < 1:
            raise ValueError(f"block_length must be at least 1, got {self.block_length}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")

    def bind(self, ctx):
        ctx.add_special_token("mask")
