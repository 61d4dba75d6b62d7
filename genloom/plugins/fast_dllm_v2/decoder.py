"""The Fast-dLLM v2 decoder: :class:`genloom.toolkit.blocks.BlockDecoder` with both cache levels.

Per block: for each sub-block, one pass computes the whole block against the block-level cache
and keeps the block's keys/values (the sub-block cache); each further step of the sub-block
recomputes only the rows feeding the sub-block's predictions (the AR shift: rows ``start - 1 ..
stop - 2``) against the kept keys/values, and commits every masked position of the sub-block
above ``threshold`` (at least one). A finished block joins the block-level cache.
"""

from __future__ import annotations

from genloom.core.errors import ConfigError
from genloom.toolkit.blocks import BlockDecoder


def build(config, ctx) -> BlockDecoder:
    block_size = config.block_size or ctx.get("block_size")
    if block_size is None:
        raise ConfigError("the fast-dllm-v2 decoder needs block_size (set it, or use the fast-dllm-v2 objective, which publishes it)", path="decoder.block_size")
    sub = config.sub_block_size
    if sub is not None and sub > block_size:
        raise ConfigError(f"sub_block_size ({sub}) must not exceed block_size ({block_size})", path="decoder.sub_block_size")
    return BlockDecoder(config, ctx, mask_id=ctx.mask_id, block_size=block_size, threshold=config.threshold,
                        temperature=config.temperature, cache=config.cache, sub_block=sub)
