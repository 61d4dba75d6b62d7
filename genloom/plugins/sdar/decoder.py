"""The SDAR decoder: :class:`genloom.toolkit.blocks.BlockDecoder` with the AR shift.

``propose`` decodes one block: every step runs the block against the cache of finished blocks
and commits every masked position whose confidence is at least ``threshold`` (at least the most
confident one); ``verify`` commits the block's new tokens; ``advance`` hands the finished block
to the cache, which takes in its keys/values during the next block's first call.
"""

from __future__ import annotations

from genloom.core.errors import ConfigError
from genloom.toolkit.blocks import BlockDecoder


def build(config, ctx) -> BlockDecoder:
    block_size = config.block_size or ctx.get("block_size")
    if block_size is None:
        raise ConfigError("the sdar decoder needs block_size (set it, or use the sdar objective, which publishes it)", path="decoder.block_size")
    return BlockDecoder(config, ctx, mask_id=ctx.mask_id, block_size=block_size, threshold=config.threshold,
                        temperature=config.temperature, cache=config.cache)
