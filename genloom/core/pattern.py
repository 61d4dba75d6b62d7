"""Attention patterns as values, not dense matrices.

An objective states the pattern it needs; kernels turn the value into their own fast form (SDPA's
``is_causal``, xformers' bias types, FlexAttention block masks). Every pattern is defined by
:meth:`AttentionPattern.allowed` over *position* index tensors (FlexAttention's ``mask_mod`` habit),
so the reference kernel can always build the dense mask and a plugin can add a pattern by
subclassing and overriding ``allowed``.

Positions are sequence positions (0 for the first real token); with a KV cache the queries carry
their absolute positions and the cached keys theirs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

KINDS = ("causal", "full", "prefix", "block_causal", "sliding_window")


@dataclass(frozen=True)
class AttentionPattern:
    """Which keys a query may attend to.

    - ``causal``: kv <= q.
    - ``full``: everything (bidirectional).
    - ``prefix``: full attention inside the first ``prefix_length`` positions, causal after.
    - ``block_causal``: blocks of ``block_size`` positions (or of ``block_lengths``, e.g. VAR's
      scales 1, 4, 9, ...): a query sees its own block and all earlier blocks.
    - ``sliding_window``: causal, and at most ``window`` positions back (kv > q - window).
    """

    kind: str = "causal"
    block_size: int | None = None
    block_lengths: tuple[int, ...] | None = None
    prefix_length: int | None = None
    window: int | None = None

    def __post_init__(self):
        if type(self) is AttentionPattern and self.kind not in KINDS:
            raise ValueError(f"unknown attention pattern '{self.kind}' (known: {', '.join(KINDS)}); subclass AttentionPattern for a new one")
        if self.kind == "block_causal" and not (self.block_size or self.block_lengths):
            raise ValueError("block_causal needs block_size or block_lengths")
        if self.kind == "prefix" and self.prefix_length is None:
            raise ValueError("prefix needs prefix_length")
        if self.kind == "sliding_window" and not self.window:
            raise ValueError("sliding_window needs window")

    @property
    def is_causal(self) -> bool:
        """True when the pattern never lets a query see a later position (incremental decoding is exact)."""
        return self.kind in ("causal", "sliding_window")

    def block_index(self, pos: torch.Tensor) -> torch.Tensor:
        if self.block_lengths:
            bounds = torch.tensor(self.block_lengths, device=pos.device).cumsum(0)
            return torch.bucketize(pos.contiguous(), bounds, right=True)
        return torch.div(pos, self.block_size, rounding_mode="floor")

    def allowed(self, q_pos: torch.Tensor, kv_pos: torch.Tensor) -> torch.Tensor:
        """Boolean tensor: may the query at ``q_pos`` attend to the key at ``kv_pos`` (broadcasting)."""
        if self.kind == "causal":
            return kv_pos <= q_pos
        if self.kind == "full":
            return torch.ones(torch.broadcast_shapes(q_pos.shape, kv_pos.shape), dtype=torch.bool, device=q_pos.device)
        if self.kind == "prefix":
            return (kv_pos <= q_pos) | (kv_pos < self.prefix_length)
        if self.kind == "block_causal":
            return self.block_index(kv_pos) <= self.block_index(q_pos)
        if self.kind == "sliding_window":
            return (kv_pos <= q_pos) & (kv_pos > q_pos - self.window)
        raise NotImplementedError(f"pattern '{self.kind}' must override allowed()")

    def positions(self, index: torch.Tensor) -> torch.Tensor:
        """The model position (for positional encodings) of the row at layout ``index``.

        The identity for every core pattern. A pattern whose layout repeats positions overrides it
        (BD3-LM's vectorised [x_t, x_0] pass: row n and row L + n are both position n).
        Kernels keep masking on the layout indices.
        """
        return index

    def mask_mod(self):
        """A FlexAttention ``mask_mod(b, h, q_idx, kv_idx)`` for sequences whose positions equal their indices."""

        def mod(b, h, q_idx, kv_idx):
            return self.allowed(q_idx, kv_idx)

        return mod

    def dense(self, q_len: int, kv_len: int | None = None, *, q_offset: int = 0, device=None) -> torch.Tensor:
        """The (q_len, kv_len) boolean mask for contiguous positions (queries start at ``q_offset``)."""
        kv_len = q_len + q_offset if kv_len is None else kv_len
        q = torch.arange(q_offset, q_offset + q_len, device=device)[:, None]
        k = torch.arange(kv_len, device=device)[None, :]
        return self.allowed(q, k)


CAUSAL = AttentionPattern("causal")
FULL = AttentionPattern("full")


def causal() -> AttentionPattern:
    return CAUSAL


def full() -> AttentionPattern:
    return FULL


def block_causal(block_size: int | None = None, block_lengths=None) -> AttentionPattern:
    return AttentionPattern("block_causal", block_size=block_size, block_lengths=tuple(block_lengths) if block_lengths else None)


def prefix(prefix_length: int) -> AttentionPattern:
    return AttentionPattern("prefix", prefix_length=prefix_length)


def sliding_window(window: int) -> AttentionPattern:
    return AttentionPattern("sliding_window", window=window)
