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


# -- segment-level structure -------------------------------------------------------------------
# Patterns over groups of positions rather than single positions: which segment may read which
# (a segment graph), group-local (block-diagonal) attention, and axial row/column attention over
# an image in raster order. Each is a value defined by ``allowed``; every backend serves it (the
# reference and SDPA through the dense mask, FlexAttention through ``mask_mod``).

WITHIN = ("causal", "full")


@dataclass(frozen=True)
class SegmentPattern(AttentionPattern):
    """A segment graph: the layout is cut into consecutive segments, and segment ``s`` reads
    itself and the segments listed in ``sources[s]``, nothing else.

    - ``segment_lengths``: the segments' lengths in layout order; segment s covers layout positions
      ``[sum(lengths[:s]), sum(lengths[:s+1]))``.
    - ``sources[s]``: the other segments a query of segment s attends to, whole (every key of a
      source segment is visible, whatever its position). Missing entries mean no sources.
    - ``within``: inside a segment, ``causal`` (kv <= q) or ``full``.
    - ``segment_starts``: the model position (for positional encodings) of each segment's first
      token; None keeps the layout positions. Segments that read no one and share a start are
      encoded exactly as if each stood alone (Graph-KV's parallel sources).

    Positions from ``sum(segment_lengths)`` on form an open *tail* (a question, the generated
    continuation): a tail query attends causally to the tail and to every segment. Its model
    positions continue after the furthest segment end.
    """

    kind: str = "segments"
    segment_lengths: tuple[int, ...] = ()
    sources: tuple[tuple[int, ...], ...] = ()
    within: str = "causal"
    segment_starts: tuple[int, ...] | None = None

    def __post_init__(self):
        n = len(self.segment_lengths)
        if n == 0 or any(int(x) < 1 for x in self.segment_lengths):
            raise ValueError(f"segment_lengths must be one or more positive lengths, got {self.segment_lengths}")
        if len(self.sources) > n:
            raise ValueError(f"sources has {len(self.sources)} entries for {n} segments")
        for s, srcs in enumerate(self.sources):
            for t in srcs:
                if not 0 <= t < n:
                    raise ValueError(f"sources[{s}] names segment {t}; segments are 0..{n - 1}")
        if self.within not in WITHIN:
            raise ValueError(f"within must be one of {', '.join(WITHIN)}, got '{self.within}'")
        if self.segment_starts is not None and len(self.segment_starts) != n:
            raise ValueError(f"segment_starts needs one start per segment ({n}), got {len(self.segment_starts)}")

    @property
    def is_causal(self) -> bool:
        return self.within == "causal" and all(t < s for s, srcs in enumerate(self.sources) for t in srcs)

    @property
    def total(self) -> int:
        return sum(self.segment_lengths)

    def _tables(self, device):
        """(segment of each layout position 0..total (total = the tail), (S+1, S+1) reads matrix,
        layout start of each segment (and of the tail), model start of each) on ``device``."""
        tables = self.__dict__.setdefault("_tables_by_device", {})
        key = str(torch.device(device))
        if key not in tables:
            n = len(self.segment_lengths)
            lengths = torch.tensor(self.segment_lengths, dtype=torch.long)
            seg = torch.cat([torch.repeat_interleave(torch.arange(n), lengths), torch.tensor([n])])
            reads = torch.zeros(n + 1, n + 1, dtype=torch.bool)
            for s, srcs in enumerate(self.sources):
                reads[s, list(srcs)] = True
            reads[n, :] = True  # the tail reads every segment (and itself causally)
            layout = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
            starts = torch.tensor(self.segment_starts, dtype=torch.long) if self.segment_starts is not None else layout[:-1]
            model = torch.cat([starts, (starts + lengths).max().reshape(1)])
            tables[key] = tuple(t.to(device) for t in (seg, reads, layout, model))
        return tables[key]

    def segment_of(self, pos: torch.Tensor) -> torch.Tensor:
        """The segment index of layout position ``pos`` (``len(segment_lengths)`` for the tail)."""
        seg = self._tables(pos.device)[0]
        return seg[pos.clamp(0, seg.numel() - 1)]

    def allowed(self, q_pos: torch.Tensor, kv_pos: torch.Tensor) -> torch.Tensor:
        seg, reads, _, _ = self._tables(q_pos.device)
        last = seg.numel() - 1
        sq, sk = seg[q_pos.clamp(0, last)], seg[kv_pos.clamp(0, last)]
        tail = sq == len(self.segment_lengths)
        inside = (kv_pos <= q_pos) if self.within == "causal" else (kv_pos >= 0)
        inside = torch.where(tail, kv_pos <= q_pos, inside)
        return torch.where(sq == sk, inside, reads[sq, sk])

    def positions(self, index: torch.Tensor) -> torch.Tensor:
        """Layout index -> model position: ``segment_starts[s]`` plus the offset inside segment s."""
        if self.segment_starts is None:
            return index
        seg, _, layout, model = self._tables(index.device)
        s = seg[index.clamp(0, seg.numel() - 1)]
        return model[s] + index - layout[s]


def segments(segment_lengths, sources=(), within: str = "causal", segment_starts=None) -> SegmentPattern:
    """A :class:`SegmentPattern`; ``sources`` as a list of lists (or a dict segment -> list)."""
    n = len(segment_lengths)
    if isinstance(sources, dict):
        sources = [sources.get(s, ()) for s in range(n)]
    return SegmentPattern(
        segment_lengths=tuple(int(x) for x in segment_lengths),
        sources=tuple(tuple(sorted(int(t) for t in srcs)) for srcs in sources),
        within=within,
        segment_starts=tuple(int(x) for x in segment_starts) if segment_starts is not None else None,
    )


@dataclass(frozen=True, eq=False)
class SegmentRows(AttentionPattern):
    """One :class:`SegmentPattern` per batch row (prompts whose segments differ in length or
    structure). Sets :attr:`per_row`: kernels call ``allowed(q_pos, kv_pos, row=...)``; every row
    must use the same ``within``."""

    kind: str = "segments"
    rows: tuple[SegmentPattern, ...] = ()

    per_row = True

    def __post_init__(self):
        if not self.rows:
            raise ValueError("SegmentRows needs one SegmentPattern per row")
        if len({r.within for r in self.rows}) > 1:
            raise ValueError("every row of a SegmentRows pattern must use the same 'within'")

    @property
    def is_causal(self) -> bool:
        return all(r.is_causal for r in self.rows)

    def _tables(self, device):
        """Per-row tables padded to common sizes: segment of each position (the tail shares the id
        ``S`` = most segments), reads (B, S + 1, S + 1), layout and model starts (B, S + 1)."""
        tables = self.__dict__.setdefault("_tables_by_device", {})
        key = str(torch.device(device))
        if key not in tables:
            S = max(len(r.segment_lengths) for r in self.rows)
            T = max(r.total for r in self.rows)
            seg = torch.full((len(self.rows), T + 1), S, dtype=torch.long)
            reads = torch.zeros(len(self.rows), S + 1, S + 1, dtype=torch.bool)
            layout = torch.zeros(len(self.rows), S + 1, dtype=torch.long)
            model = torch.zeros(len(self.rows), S + 1, dtype=torch.long)
            for b, r in enumerate(self.rows):
                s_b, r_reads, r_layout, r_model = (t.cpu() for t in r._tables("cpu"))
                n = len(r.segment_lengths)
                seg[b, : r.total] = s_b[: r.total]
                reads[b, :n, :n] = r_reads[:n, :n]
                reads[b, S, :] = True
                layout[b, :n], layout[b, S] = r_layout[:n], r_layout[n]
                model[b, :n], model[b, S] = r_model[:n], r_model[n]
            tables[key] = tuple(t.to(device) for t in (seg, reads, layout, model))
        return tables[key]

    def allowed(self, q_pos: torch.Tensor, kv_pos: torch.Tensor, row: torch.Tensor | None = None) -> torch.Tensor:
        seg, reads, _, _ = self._tables(q_pos.device)
        if row is None:
            if seg.shape[0] != 1:
                raise ValueError("a SegmentRows pattern over several rows needs the row index (per_row)")
            row = torch.zeros((), dtype=torch.long, device=q_pos.device)
        last = seg.shape[1] - 1
        sq, sk = seg[row, q_pos.clamp(0, last)], seg[row, kv_pos.clamp(0, last)]
        tail = sq == reads.shape[1] - 1
        inside = (kv_pos <= q_pos) if self.rows[0].within == "causal" else (kv_pos >= 0)
        inside = torch.where(tail, kv_pos <= q_pos, inside)
        return torch.where(sq == sk, inside, reads[row, sq, sk])

    def mask_mod(self):
        def mod(b, h, q_idx, kv_idx):
            return self.allowed(q_idx, kv_idx, row=b)

        return mod

    def positions(self, index: torch.Tensor) -> torch.Tensor:
        """Layout index (B, L) -> model position, row by row (see :meth:`SegmentPattern.positions`)."""
        seg, _, layout, model = self._tables(index.device)
        rows = torch.arange(index.shape[0], device=index.device)[:, None]
        s = seg[rows, index.clamp(0, seg.shape[1] - 1)]
        return model[rows, s] + index - layout[rows, s]


def segment_rows(patterns) -> SegmentRows:
    """A :class:`SegmentRows` pattern from one :class:`SegmentPattern` per batch row."""
    return SegmentRows(rows=tuple(patterns))


@dataclass(frozen=True)
class GroupLocalPattern(AttentionPattern):
    """Group-local (block-diagonal) attention: positions are cut into groups of ``group_size`` and a
    query reads only its own group, causally (``causal=True``: kv <= q) or wholly. FIT's local
    layers; defined for any length (the last group may be partial)."""

    kind: str = "group_local"
    group_size: int = 1
    causal: bool = True

    def __post_init__(self):
        if int(self.group_size) < 1:
            raise ValueError(f"group_size must be at least 1, got {self.group_size}")

    @property
    def is_causal(self) -> bool:
        return self.causal

    def group_of(self, pos: torch.Tensor) -> torch.Tensor:
        return torch.div(pos, self.group_size, rounding_mode="floor")

    def allowed(self, q_pos: torch.Tensor, kv_pos: torch.Tensor) -> torch.Tensor:
        same = self.group_of(q_pos) == self.group_of(kv_pos)
        return same & (kv_pos <= q_pos) if self.causal else same


def group_local(group_size: int, causal: bool = True) -> GroupLocalPattern:
    return GroupLocalPattern(group_size=int(group_size), causal=bool(causal))


AXES = ("row", "column")


@dataclass(frozen=True)
class AxialPattern(AttentionPattern):
    """Axial attention over an image laid out in raster order, ``width`` pixels a row.

    Position p (after ``offset`` leading positions, e.g. a class token) is pixel ``p - offset`` at
    row ``(p - offset) // width``, column ``(p - offset) % width``. A query reads only its own row
    (``axis="row"``) or its own column (``axis="column"``):

    - ``causal=False``: the whole row / column (the Axial Transformer's unmasked row attention);
    - ``causal=True``: entries up to and including its own along the axis (masked attention);
    - ``shift=True`` (with ``causal``): strictly earlier entries only, which is masked attention
      on the input shifted by one along the axis (the first entry reads nothing and gets zeros).

    The ``offset`` leading positions are read by every later query; they attend causally.
    """

    kind: str = "axial"
    width: int = 1
    axis: str = "row"
    causal: bool = True
    shift: bool = False
    offset: int = 0

    def __post_init__(self):
        if int(self.width) < 1:
            raise ValueError(f"width must be at least 1, got {self.width}")
        if self.axis not in AXES:
            raise ValueError(f"axis must be one of {', '.join(AXES)}, got '{self.axis}'")
        if self.shift and not self.causal:
            raise ValueError("shift needs causal=True (a shifted mask reads strictly earlier entries)")
        if int(self.offset) < 0:
            raise ValueError(f"offset must be >= 0, got {self.offset}")

    @property
    def is_causal(self) -> bool:
        return self.causal

    def row_col(self, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(row, column) of layout position ``pos`` (negative rows inside the offset)."""
        pixel = pos - self.offset
        return torch.div(pixel, self.width, rounding_mode="floor"), pixel % self.width

    def allowed(self, q_pos: torch.Tensor, kv_pos: torch.Tensor) -> torch.Tensor:
        rq, cq = self.row_col(q_pos)
        rk, ck = self.row_col(kv_pos)
        if self.axis == "row":
            same, aq, ak = rq == rk, cq, ck
        else:
            same, aq, ak = cq == ck, rq, rk
        if not self.causal:
            along = same
        else:
            along = same & ((ak < aq) if self.shift else (ak <= aq))
        pixel_q = q_pos >= self.offset
        prefix_k = kv_pos < self.offset
        return torch.where(pixel_q, along | prefix_k, prefix_k & (kv_pos <= q_pos)) & (kv_pos >= 0)


def axial(width: int, axis: str = "row", causal: bool = True, shift: bool = False, offset: int = 0) -> AxialPattern:
    return AxialPattern(width=int(width), axis=axis, causal=bool(causal), shift=bool(shift), offset=int(offset))
