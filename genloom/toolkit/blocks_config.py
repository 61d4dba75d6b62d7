"""Config of AR-adapted block diffusion objectives and block decoders (torch-free, so listing
plugins stays light).

The runtime lives in :mod:`genloom.toolkit.blocks`.
"""

from __future__ import annotations

from dataclasses import dataclass

from genloom.core.constraints import NonNegativeFloat, PositiveInt, Probability


@dataclass
class BlockObjectiveConfig:
    """Base config of block-diffusion objectives with one block size and a per-block masking rate
    drawn from U[mask_rate_min, mask_rate_max]. Binding adds the ``mask`` token and publishes
    ``ctx.block_size`` for the decoder."""

    block_size: PositiveInt = 4
    """Tokens per block."""
    mask_rate_min: Probability = 0.0
    """Lower end of the per-block masking rate t_b ~ U[mask_rate_min, mask_rate_max]."""
    mask_rate_max: Probability = 1.0
    """Upper end of the per-block masking rate."""

    def __post_init__(self):
        if self.block_size < 1:
            raise ValueError(f"block_size must be at least 1, got {self.block_size}")
        if not 0.0 <= self.mask_rate_min <= self.mask_rate_max <= 1.0:
            raise ValueError(f"need 0 <= mask_rate_min <= mask_rate_max <= 1, got mask_rate_min={self.mask_rate_min}, mask_rate_max={self.mask_rate_max}")

    def bind(self, ctx):
        ctx.add_special_token("mask")
        ctx.set("block_size", self.block_size)


@dataclass
class BlockDecoderConfig:
    """Base config of block-by-block decoders with parallel threshold commits (the toolkit's
    ``BlockDecoder``). Binding adds the ``mask`` token and takes the objective's ``block_size``."""

    block_size: PositiveInt | None = None
    """Tokens per block (None: the objective's block_size)."""
    threshold: Probability = 0.9
    """Commit every masked position of the block whose confidence is >= threshold (at least one per step)."""
    temperature: NonNegativeFloat = 0.0
    """0: argmax predictions; > 0: Gumbel-noised draws at this temperature."""
    cache: bool = True
    """Keep finished blocks' keys/values (False: recompute the whole context every step)."""

    def bind(self, ctx):
        ctx.add_special_token("mask")
        if self.block_size is None:
            self.block_size = ctx.get("block_size")
