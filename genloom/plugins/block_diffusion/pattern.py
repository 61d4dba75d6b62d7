"""The BD3-LM training attention pattern over the concatenation ``[x_t, x_0]`` (paper Fig. 2).

Rows ``0 .. L-1`` hold the noisy sequence ``x_t``, rows ``L .. 2L-1`` the clean sequence ``x_0``.
With blocks of ``block_size`` tokens (block of a row = its sequence position // block_size):

- noisy block b -> noisy block b: bidirectional inside the block (block-diagonal, ``M_BD``);
- noisy block b -> clean blocks < b (offset block-causal, ``M_OBC``);
- clean block b -> clean blocks <= b (block-causal, ``M_BC``);
- clean -> noisy: never.

One forward pass over the 2L rows therefore gives, for every block at once, the logits the paper's
per-block loop computes with a KV cache of the clean blocks before it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from genloom.core.pattern import AttentionPattern


@dataclass(frozen=True)
class BlockDiffusionPattern(AttentionPattern):
    """Vectorised BD3-LM mask over ``[x_t, x_0]`` (length ``2 * seq_len``), as a FlexAttention-style ``allowed``.

    ``q_pos``/``kv_pos`` given to :meth:`allowed` are *layout* indices in ``0 .. 2*seq_len-1``;
    :meth:`positions` maps them to sequence positions (``index mod seq_len``) for positional encodings,
    so a noisy token and its clean copy share their position.
    """

    kind: str = "block_diffusion"
    seq_len: int = 0

    def __post_init__(self):
        if not self.block_size or self.block_size < 1:
            raise ValueError("BlockDiffusionPattern needs block_size >= 1")
        if self.seq_len < 1:
            raise ValueError("BlockDiffusionPattern needs seq_len >= 1 (the length L of x_t; the layout is 2L)")

    @property
    def is_causal(self) -> bool:
        return False

    def positions(self, index: torch.Tensor) -> torch.Tensor:
        """Sequence position of a layout row: row n and row L + n are both position n."""
        return torch.remainder(index, self.seq_len)

    def allowed(self, q_pos: torch.Tensor, kv_pos: torch.Tensor) -> torch.Tensor:
        L = self.seq_len
        q_noisy = q_pos < L
        kv_noisy = kv_pos < L
        q_block = torch.div(torch.remainder(q_pos, L), self.block_size, rounding_mode="floor")
        kv_block = torch.div(torch.remainder(kv_pos, L), self.block_size, rounding_mode="floor")
        block_diagonal = q_noisy & kv_noisy & (q_block == kv_block)
        offset_block_causal = q_noisy & ~kv_noisy & (kv_block < q_block)
        block_causal = ~q_noisy & ~kv_noisy & (kv_block <= q_block)
        return block_diagonal | offset_block_causal | block_causal


def block_diffusion_pattern(seq_len: int, block_size: int) -> BlockDiffusionPattern:
    return BlockDiffusionPattern(seq_len=seq_len, block_size=block_size)
