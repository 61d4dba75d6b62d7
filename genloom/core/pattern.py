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


@dataclass(frozen=True, eq=False)
class TreePattern(AttentionPattern):
    """Token-tree attention (tree speculative decoding): a tree of ``N`` nodes follows a committed prefix.

    ``parents[i]`` is the parent node of node ``i`` (-1 for a root, which hangs off the prefix);
    a parent always comes before its child. In row b the prefix holds layout positions
    ``0..start[b]-1`` and node i sits at layout position ``start[b] + i``. A node attends to the
    whole prefix and to its own ancestors and itself, never to a sibling branch; a prefix query is
    causal. The model position of node i (for positional encodings) is ``start[b] + depth[i]``, so
    every root-to-leaf path is encoded exactly as the sequence it stands for.

    The pattern depends on the row (``start`` is per row), so it sets :attr:`per_row` and kernels
    call ``allowed(q_pos, kv_pos, row=...)`` with the batch index of each pair.
    """

    kind: str = "tree"
    parents: tuple[int, ...] = ()
    start: torch.Tensor | None = None
    """(B,) layout position of node 0 in each row (the committed prefix length)."""

    per_row = True

    def __post_init__(self):
        for i, p in enumerate(self.parents):
            if not -1 <= p < i:
                raise ValueError(f"tree parents must point to an earlier node or be -1: node {i} has parent {p}")
        if self.start is None:
            raise ValueError("a tree pattern needs start (the committed length per row)")

    @property
    def is_causal(self) -> bool:
        return True  # a node never sees a later layout position

    @property
    def size(self) -> int:
        return len(self.parents)

    def _tables(self, device):
        """(ancestor matrix, depths, start) on ``device``, computed once per device."""
        tables = self.__dict__.setdefault("_tables_by_device", {})
        key = str(torch.device(device))
        if key not in tables:
            anc, depth = tree_ancestors(self.parents)
            tables[key] = (anc.to(device), depth.to(device), self.start.to(device).long())
        return tables[key]

    def allowed(self, q_pos: torch.Tensor, kv_pos: torch.Tensor, row: torch.Tensor | None = None) -> torch.Tensor:
        anc, _, start = self._tables(q_pos.device)
        if row is None:
            if start.numel() != 1:
                raise ValueError("a tree pattern over several rows needs the row index (per_row)")
            row = torch.zeros((), dtype=torch.long, device=q_pos.device)
        s = start[row]
        n = anc.shape[0]
        qi, ki = q_pos - s, kv_pos - s
        in_tree = (qi >= 0) & (ki >= 0) & (qi < n) & (ki < n)
        ancestor = anc[qi.clamp(0, n - 1), ki.clamp(0, n - 1)]
        return torch.where(qi < 0, kv_pos <= q_pos, (ki < 0) | (in_tree & ancestor))

    def mask_mod(self):
        def mod(b, h, q_idx, kv_idx):
            return self.allowed(q_idx, kv_idx, row=b)

        return mod

    def positions(self, index: torch.Tensor) -> torch.Tensor:
        """Layout index -> model position: prefix unchanged, node i at ``start + depth[i]``. ``index`` is (B, L)."""
        _, depth, start = self._tables(index.device)
        s = start.view(-1, *([1] * (index.dim() - 1))) if index.dim() > 1 else start[:1]
        i = index - s
        inside = (i >= 0) & (i < depth.numel())
        return torch.where(inside, s + depth[i.clamp(0, depth.numel() - 1)], index)


def tree_ancestors(parents) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ancestor (N, N) bool, depth (N,))``: ``ancestor[i, j]`` when node j is node i or one of its
    ancestors; roots have depth 0."""
    n = len(parents)
    anc = torch.eye(n, dtype=torch.bool)
    depth = torch.zeros(n, dtype=torch.long)
    for i, p in enumerate(parents):
        if p >= 0:
            anc[i] |= anc[p]
            depth[i] = depth[p] + 1
    return anc, depth


def tree(parents, start) -> TreePattern:
    """A :class:`TreePattern` for nodes with ``parents`` after ``start`` committed positions (int or (B,))."""
    start = torch.as_tensor(start, dtype=torch.long).reshape(-1)
    return TreePattern(parents=tuple(int(p) for p in parents), start=start)
