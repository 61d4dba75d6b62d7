"""The NBDiff decoder: :class:`genloom.toolkit.blocks.BlockDecoder` with a causal context.

A finished block enters the KV cache through a causal pass of its own (the context stays causal,
as in training); the active block attends to the whole cached context and bidirectionally to
itself; threshold commits inside the block.
"""

from __future__ import annotations

from genloom.core.errors import ConfigError
from genloom.core.pattern import CAUSAL
from genloom.toolkit.blocks import BlockDecoder


def build(config, ctx) -> BlockDecoder:
    block_size = config.block_size or ctx.get("block_size")
    if block_size is None:
        raise ConfigError("the nbdiff decoder needs block_size (set it, or use the nbdiff objective, which publishes it)", path="decoder.block_size")
    return BlockDecoder(config, ctx, mask_id=ctx.mask_id, block_size=block_size, threshold=config.threshold,
                        temperature=config.temperature, cache=config.cache, clean_pattern=CAUSAL)
