"""The Axial Transformer backbone: an outer (row-context) stack and an inner (masked row) stack.

The backbone reads hidden states of a raster-order image sequence, ``width`` tokens a row
(position t is at row ``t // width``, column ``t % width``). Its output at position t depends on
the inputs at positions <= t only (the causal contract), in two stages (Ho et al., 2019, sec. 4):

1. **Outer decoder: the context of each row from the rows above.** The input is shifted down by
   one row (row r receives row r - 1, row 0 zeros), then every outer layer runs *unmasked row
   attention* (a row reads its whole row) and *masked column attention* (a column reads the rows
   above it and its own), each followed by a feed-forward block. Row r of the result depends only
   on input rows < r.
2. **Inner decoder: masked row attention.** The context is added to the input, and every inner
   layer runs masked row attention (a position reads its row up to itself) and a feed-forward
   block. Position (r, c) thus reads (r, <= c) directly and every earlier row through the context.

Each attention runs in one of two forms that compute the same function: ``reshape`` (rows or
columns become batch rows, O(N sqrt N) attention entries: the paper's point) and ``mask`` (the
flat sequence under the core's :class:`~genloom.core.pattern.AxialPattern` masks, the definition).

Decoding is semi-parallel, as in the paper: the outer stack runs once per row, when the row's
first token arrives (it needs only the rows above, complete by then), and its context is kept in
the state; the inner stack runs token by token over a KV cache read under the masked-row
pattern at absolute positions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from genloom.core import kernels
from genloom.core.model import Backbone
from genloom.core.pattern import CAUSAL, FULL, AttentionPattern, axial
from genloom.core.state import KVCache, State


class AxialAttention(nn.Module):
    """Multi-head self-attention along one axis (row or column) of a raster image."""

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads, self.head_dim = n_heads, d_model // n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)

    def _heads(self, x):
        *lead, L, D = x.shape
        q, k, v = self.qkv(x).view(*lead, L, 3, self.n_heads, self.head_dim).unbind(-3)
        return (t.transpose(-2, -3) for t in (q, k, v))  # (..., H, L, Dh)

    def _merge(self, out):
        return self.out(out.transpose(-2, -3).flatten(-2))

    def reshaped(self, x: torch.Tensor, axis: str, causal: bool) -> torch.Tensor:
        """``x`` (B, R, W, D): attention inside each row (``axis="row"``) or column, as batch rows."""
        if axis == "column":
            x = x.transpose(1, 2)
        B, A, S, D = x.shape
        q, k, v = self._heads(x.reshape(B * A, S, D))
        out = self._merge(kernels.call("attention", q, k, v, pattern=CAUSAL if causal else FULL)).view(B, A, S, D)
        return out.transpose(1, 2) if axis == "column" else out

    def masked(self, x: torch.Tensor, pattern: AttentionPattern, *, q_pos=None, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        """``x`` (B, L, D): the flat sequence under an axial ``pattern`` (with a cache: new tokens
        at positions ``q_pos`` read the cached ones)."""
        q, k, v = self._heads(x)
        if cache is None:
            out = kernels.call("attention", q, k, v, pattern=pattern)
        else:
            k, v, kv_pos, kv_valid = cache.update(layer, k, v)
            out = kernels.call("attention", q, k, v, pattern=pattern, q_pos=q_pos, kv_pos=kv_pos, kv_valid=kv_valid)
        return self._merge(out)


class FeedForward(nn.Module):
    def __init__(self, d_model: int, mult: int):
        super().__init__()
        self.up = nn.Linear(d_model, mult * d_model)
        self.down = nn.Linear(mult * d_model, d_model)

    def forward(self, x):
        return self.down(F.gelu(self.up(x)))


class OuterLayer(nn.Module):
    """Unmasked row attention, masked column attention, feed-forward (pre-norm residuals)."""

    def __init__(self, cfg):
        super().__init__()
        self.row_norm, self.column_norm, self.ffn_norm = (nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps) for _ in range(3))
        self.row = AxialAttention(cfg.d_model, cfg.n_heads)
        self.column = AxialAttention(cfg.d_model, cfg.n_heads)
        self.ffn = FeedForward(cfg.d_model, cfg.ffn_mult)

    def reshaped(self, x):  # (B, R, W, D)
        x = x + self.row.reshaped(self.row_norm(x), "row", causal=False)
        x = x + self.column.reshaped(self.column_norm(x), "column", causal=True)
        return x + self.ffn(self.ffn_norm(x))

    def masked(self, x, width: int):  # (B, L, D)
        x = x + self.row.masked(self.row_norm(x), axial(width, "row", causal=False))
        x = x + self.column.masked(self.column_norm(x), axial(width, "column", causal=True))
        return x + self.ffn(self.ffn_norm(x))


class InnerLayer(nn.Module):
    """Masked row attention, feed-forward (pre-norm residuals)."""

    def __init__(self, cfg):
        super().__init__()
        self.row_norm, self.ffn_norm = (nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps) for _ in range(2))
        self.row = AxialAttention(cfg.d_model, cfg.n_heads)
        self.ffn = FeedForward(cfg.d_model, cfg.ffn_mult)

    def reshaped(self, x):
        x = x + self.row.reshaped(self.row_norm(x), "row", causal=True)
        return x + self.ffn(self.ffn_norm(x))

    def masked(self, x, width: int, **cache):
        x = x + self.row.masked(self.row_norm(x), axial(width, "row", causal=True), **cache)
        return x + self.ffn(self.ffn_norm(x))


class AxialState(State):
    """The inner stack's KV cache, the inputs seen so far and the outer context of every row begun.

    ``history[b, p]`` is row b's input at position p (real tokens only, so padding never shifts a
    position); ``context[b, p]`` the outer context at p, valid for the first ``context_rows[b]``
    image rows. Context row r depends on positions < r * width only, so a rollback to n tokens
    keeps the rows r with r * width <= n.
    """

    rollback_any = True

    def __init__(self, cache: KVCache, width: int, d_model: int, capacity: int, device=None, dtype=torch.float32):
        self.cache = cache
        self.width = width
        B = cache.batch_size
        self.history = torch.zeros(B, capacity, d_model, device=device, dtype=dtype)
        self.context = torch.zeros_like(self.history)
        self.context_rows = torch.zeros(B, dtype=torch.long, device=device)

    @property
    def lengths(self) -> torch.Tensor:
        return self.cache.lengths

    def ensure(self, needed: int) -> None:
        """Grow the history and context to hold ``needed`` positions."""
        have = self.history.shape[1]
        if needed > have:
            extra = max(needed, 2 * have) - have
            self.history = F.pad(self.history, (0, 0, 0, extra))
            self.context = F.pad(self.context, (0, 0, 0, extra))

    def write(self, h: torch.Tensor, positions: torch.Tensor, valid: torch.Tensor) -> None:
        self.ensure(int(positions.max()) + 1 if positions.numel() else 0)
        index = positions.clamp_min(0)[..., None].expand_as(h)
        old = self.history.gather(1, index)
        self.history = self.history.scatter(1, index, torch.where(valid[..., None], h.to(self.history.dtype), old))

    def reorder(self, index: torch.Tensor) -> None:
        index = index.to(self.history.device)
        self.cache.reorder(index)
        self.history = self.history.index_select(0, index)
        self.context = self.context.index_select(0, index)
        self.context_rows = self.context_rows.index_select(0, index)

    def rollback(self, lengths) -> None:
        self.cache.rollback(lengths)
        self.context_rows = torch.minimum(self.context_rows, self.cache.lengths // self.width + 1)

    def snapshot(self):
        return (self.cache.snapshot(), self.history.clone(), self.context.clone(), self.context_rows.clone())

    def restore(self, snap) -> None:
        cache, history, context, rows = snap
        self.cache.restore(cache)
        self.history, self.context, self.context_rows = history.clone(), context.clone(), rows.clone()


class AxialTransformer(Backbone):
    """Outer (row context) + inner (masked row) axial attention stacks over a raster sequence."""

    patterns = frozenset({"causal"})

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.width = cfg.width
        self.row_embedding = nn.Embedding(cfg.max_rows, cfg.d_model)
        self.column_embedding = nn.Embedding(cfg.width, cfg.d_model)
        self.outer = nn.ModuleList(OuterLayer(cfg) for _ in range(cfg.outer_layers))
        self.inner = nn.ModuleList(InnerLayer(cfg) for _ in range(cfg.inner_layers))
        self.outer_norm = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.norm = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        for p in (self.row_embedding.weight, self.column_embedding.weight):
            nn.init.normal_(p, std=0.02)

    def position_embedding(self, positions: torch.Tensor) -> torch.Tensor:
        rows = torch.div(positions, self.width, rounding_mode="floor")
        if positions.numel() and int(rows.max()) >= self.cfg.max_rows:
            raise ValueError(f"position {int(positions.max())} is in row {int(rows.max())}, past max_rows={self.cfg.max_rows} (backbone.max_rows)")
        return self.row_embedding(rows) + self.column_embedding(positions % self.width)

    def context(self, h: torch.Tensor) -> torch.Tensor:
        """The outer decoder over whole rows ``h`` (B, R * W, D): each row's context from the rows above."""
        B, L, D = h.shape
        W = self.width
        x = torch.cat([h.new_zeros(B, W, D), h[:, : L - W]], 1)  # shifted down one row
        x = x + self.position_embedding(torch.arange(L, device=h.device))
        if self.cfg.attention == "reshape":
            x = x.view(B, L // W, W, D)
            for layer in self.outer:
                x = layer.reshaped(x)
            x = x.view(B, L, D)
        else:
            for layer in self.outer:
                x = layer.masked(x, W)
        return self.outer_norm(x)

    def forward(self, h, *, pattern: AttentionPattern = CAUSAL, state: AxialState | None = None, valid=None):
        if pattern.kind != "causal":
            raise ValueError(f"the axial transformer serves the causal raster order only, not '{pattern.kind}'")
        if state is None and valid is not None:  # padding must not shift positions: decode into a fresh state
            state = self.init_state(h.shape[0], h.shape[1], device=h.device, dtype=h.dtype)
        if state is not None:
            return self._advance(h, state, valid)
        B, L, D = h.shape
        W = self.width
        R = -(-L // W)
        h = F.pad(h, (0, 0, 0, R * W - L))  # whole rows; the padding is later than every real token
        x = h + self.position_embedding(torch.arange(R * W, device=h.device)) + self.context(h)
        if self.cfg.attention == "reshape":
            x = x.view(B, R, W, D)
            for layer in self.inner:
                x = layer.reshaped(x)
            x = x.view(B, R * W, D)
        else:
            for layer in self.inner:
                x = layer.masked(x, W)
        return self.norm(x[:, :L])

    def _advance(self, h, state: AxialState, valid):
        W = self.width
        positions, valid = state.cache.begin(valid, h.shape[1])
        state.write(h, positions, valid)
        lengths = state.cache.lengths
        rows = torch.div(lengths + W - 1, W, rounding_mode="floor")  # image rows begun so far
        if bool((rows > state.context_rows).any()):  # the outer decoder, once per new row
            R = int(rows.max())
            state.ensure(R * W)
            fresh = self.context(state.history[:, : R * W])
            row_of = torch.arange(R * W, device=h.device) // W
            new = (row_of[None] >= state.context_rows[:, None]) & (row_of[None] < rows[:, None])
            state.context[:, : R * W] = torch.where(new[..., None], fresh, state.context[:, : R * W])
            state.context_rows = torch.maximum(state.context_rows, rows)
        context = state.context.gather(1, positions[..., None].expand_as(h))
        x = h + self.position_embedding(positions) + context
        for i, layer in enumerate(self.inner):
            x = layer.masked(x, W, q_pos=positions, cache=state.cache, layer=i)
        return self.norm(x)

    def init_state(self, batch_size: int, capacity: int = 256, device=None, dtype=None) -> AxialState:
        cfg = self.cfg
        dtype = dtype or next(self.parameters()).dtype
        device = device or next(self.parameters()).device
        cache = KVCache(cfg.inner_layers, batch_size, cfg.n_heads, cfg.d_model // cfg.n_heads, capacity, device=device, dtype=dtype)
        return AxialState(cache, cfg.width, cfg.d_model, capacity, device=device, dtype=dtype)


def attention_entries(length: int, width: int, outer_layers: int, inner_layers: int) -> dict[str, int]:
    """(query, key) pairs one forward scores, by counting the masks: the axial stack's per layer
    (outer: whole row + column up to the row; inner: row up to the position) against full causal
    attention's L (L + 1) / 2 over the same layers."""
    t = torch.arange(length)
    count = lambda pat: int(pat.dense(length).sum())  # noqa: E731
    outer = count(axial(width, "row", causal=False)) + count(axial(width, "column"))
    inner = count(axial(width, "row"))
    return {
        "axial": outer_layers * outer + inner_layers * inner,
        "full_causal": (2 * outer_layers + inner_layers) * int((t[None, :] <= t[:, None]).sum()),
    }


def build(config, ctx):
    return AxialTransformer(config)
