"""The Markov transformer: a transformer whose output at position t reads only the last ``order``
inputs, ``h[t - order + 1 .. t]``.

Every position gets its own window: the inputs are unfolded into (B * L, order, D) windows (left
padded where the sequence is shorter, with the padding marked invalid), a causal transformer (the
registry's ``transformer``, built with this backbone's width) runs on every window at once with
positions relative to the window, and the window's last output is the position's output. So the
output at t -- and the next-token logits the head makes of it -- has an exactly zero Jacobian with
respect to every input before ``t - order + 1``: a Markov model of order ``order``, whose
sequence log-probability is the score of an order-``order`` CRF. Fed a window shorter than
``order`` (a context of k tokens), the same network gives the order-k scores the cascade uses.

The state keeps every consumed input (B, T, D) with a validity mask, like a KV cache of inputs; a
new position's window is the last ``order`` valid inputs of its row.
"""

from __future__ import annotations

import torch

from genloom.core.model import Backbone
from genloom.core.pattern import CAUSAL, AttentionPattern
from genloom.core.state import State, as_lengths


def windows(h: torch.Tensor, valid: torch.Tensor, order: int, ranks: torch.Tensor, at: torch.Tensor):
    """The window of each query: the ``order`` inputs of rank ``ranks - order + 1 .. ranks``.

    ``h`` (B, T, D) and ``valid`` (B, T) hold a row's inputs (valid ones in order); ``ranks`` (B, Q)
    is each query's rank among its row's valid inputs (0-based) and ``at`` (B, Q) whether the query
    is real. Returns (B, Q, order, D) windows and (B, Q, order) validity.
    """
    B, T, D = h.shape
    order_idx = torch.sort((~valid).int(), dim=1, stable=True).indices  # valid inputs first, in order
    packed = h.gather(1, order_idx[..., None].expand(B, T, D))
    count = valid.long().sum(1)
    offsets = torch.arange(order - 1, -1, -1, device=h.device)  # order-1 .. 0 inputs before the query
    index = ranks[..., None] - offsets  # (B, Q, order)
    ok = (index >= 0) & (index < count[:, None, None]) & at[..., None]
    ok[..., -1] = True  # never an empty window (a padding query reads something; its output is dropped)
    index = index.clamp(0, max(T - 1, 0))
    Q = ranks.shape[1]
    win = packed[:, None].expand(B, Q, T, D).gather(2, index[..., None].expand(B, Q, order, D))
    return win, ok


class MarkovState(State):
    """Every consumed input of a Markov transformer, with a validity mask (rollback to any length)."""

    rollback_any = True

    def __init__(self, batch_size: int, d_model: int, capacity: int = 0, *, device=None, dtype=torch.float32):
        self.inputs = torch.zeros(batch_size, 0, d_model, device=device, dtype=dtype)
        self.valid = torch.zeros(batch_size, 0, dtype=torch.bool, device=device)
        self._lengths = torch.zeros(batch_size, dtype=torch.long, device=device)

    @property
    def lengths(self) -> torch.Tensor:
        return self._lengths

    @property
    def device(self):
        return self._lengths.device

    def append(self, h: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Consume ``h`` (B, L, D) where ``valid``; returns each new token's rank (B, L)."""
        ranks = self._lengths[:, None] + valid.long().cumsum(1) - 1
        self.inputs = torch.cat([self.inputs, h.to(self.inputs.dtype) if self.inputs.numel() else h], 1)
        self.valid = torch.cat([self.valid, valid], 1)
        self._lengths = self._lengths + valid.long().sum(1)
        return ranks

    def reorder(self, index: torch.Tensor) -> None:
        index = index.to(self.device)
        self.inputs, self.valid, self._lengths = self.inputs.index_select(0, index), self.valid.index_select(0, index), self._lengths.index_select(0, index)

    def rollback(self, lengths) -> None:
        lengths = as_lengths(lengths, self._lengths.numel(), self.device)
        if bool((lengths > self._lengths).any()):
            raise ValueError(f"cannot roll forward: asked for lengths {lengths.tolist()} but the state holds {self._lengths.tolist()}")
        self.valid = self.valid & (self.valid.long().cumsum(1) <= lengths[:, None])
        self._lengths = lengths.clone()

    def extend(self, other: State) -> None:
        if not isinstance(other, MarkovState):
            raise NotImplementedError(f"a MarkovState extends only by another MarkovState (got {type(other).__name__})")
        width = max(self.inputs.shape[1], other.inputs.shape[1])

        def pad(t, fill=0):
            extra = width - t.shape[1]
            return torch.cat([t, t.new_full((t.shape[0], extra, *t.shape[2:]), fill)], 1) if extra else t

        self.inputs = torch.cat([pad(self.inputs), pad(other.inputs).to(self.inputs.dtype)])
        self.valid = torch.cat([pad(self.valid, False), pad(other.valid, False)])
        self._lengths = torch.cat([self._lengths, other._lengths])

    def snapshot(self):
        return (self.inputs, self.valid.clone(), self._lengths.clone())

    def restore(self, snap) -> None:
        self.inputs, valid, lengths = snap
        self.valid, self._lengths = valid.clone(), lengths.clone()
        self.inputs = self.inputs[:, : self.valid.shape[1]]


class MarkovTransformer(Backbone):
    """A causal transformer applied to each position's window of the last ``order`` inputs."""

    patterns = frozenset({"causal"})

    def __init__(self, order: int, window_backbone: Backbone, d_model: int):
        super().__init__()
        self.order = order
        self.markov_order = order
        """The Markov order (what the ``markov-cascade`` decoder reads)."""
        self.d_model = d_model
        self.window = window_backbone

    def supports(self, pattern: AttentionPattern) -> bool:
        return pattern.kind == "causal"

    def forward(self, h, *, pattern: AttentionPattern = CAUSAL, state: MarkovState | None = None, valid=None):
        B, L, D = h.shape
        valid = torch.ones(B, L, dtype=torch.bool, device=h.device) if valid is None else valid.to(h.device, torch.bool)
        if state is not None:
            ranks = state.append(h, valid)
            inputs, all_valid = state.inputs, state.valid
        else:
            ranks = valid.long().cumsum(1) - 1
            inputs, all_valid = h, valid
        win, ok = windows(inputs, all_valid, self.order, ranks, valid)
        out = self.window(win.reshape(B * L, self.order, D), pattern=CAUSAL, valid=ok.reshape(B * L, self.order))
        out = out[:, -1].reshape(B, L, D)
        return torch.where(valid[..., None], out, torch.zeros_like(out))

    def init_state(self, batch_size: int, capacity: int = 256, device=None, dtype=None):
        p = next(self.parameters())
        return MarkovState(batch_size, self.d_model, capacity, device=device or p.device, dtype=dtype or p.dtype)


def build(config, ctx):
    node = {"name": "transformer", "d_model": config.d_model, "n_layers": config.n_layers, "n_heads": config.n_heads}
    inner = ctx.build("backbone", node, path=f"{ctx.current or 'backbone'}.window")
    return MarkovTransformer(config.order, inner, config.d_model)
