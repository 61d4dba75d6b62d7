"""The futurefill backbone: gated long-convolution blocks, decoded by per-row FutureFill streams.

Block, for x (B, L, D)::

    xn  = LN(x);   u = xn W_u;   y = conv(u, k) + skip * u;   out = x + W_o(silu(xn W_g) * y)
    then + FFN(LN(.))

Full sequences convolve through the ``fft_conv`` op. The state holds, per batch row and layer, a
:class:`genloom.kernels.fft_conv.ConvStream` made by the ``fft_conv_stream`` kernel op;
a new token's convolution output is the stream's future buffer plus the direct sum over the
pending block.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from genloom.core import kernels
from genloom.core.model import Backbone
from genloom.core.pattern import CAUSAL, AttentionPattern
from genloom.core.state import State, as_lengths

NAIVE_BLOCK = 1 << 40  # a block that never fills: every output is the direct sum over the history


def _conv_stream(k, block):
    """A one-row stream from the ``fft_conv_stream`` op: ``futurefill``, or ``reference`` (the
    naive direct sum) when the block never fills."""
    backend = kernels.implementation("fft_conv_stream", "reference" if block >= NAIVE_BLOCK else "futurefill")
    return backend(k, 1, block=block)


class FutureFillState(State):
    """Per batch row and layer a FutureFill stream; rollback inside the most recent advance.

    ``streams[b][i]`` is row b's stream of layer i. The last advance keeps each row's stream
    snapshots from before it and the convolution inputs it fed, so :meth:`rollback` restores and
    refeeds the kept ones."""

    rollback_any = False

    def __init__(self, backbone, batch_size: int, device=None):
        self.backbone = backbone
        self.batch_size = batch_size
        self.streams = [[None] * len(backbone.layers) for _ in range(batch_size)]
        self._lengths = torch.zeros(batch_size, dtype=torch.long, device=device)
        self._before = None  # per row: per layer stream snapshot (or None: not created yet)
        self._fed = None  # per row: per layer the (n_b, D) inputs fed in the last advance
        self._lengths_before = None

    @property
    def lengths(self):
        return self._lengths

    def stream(self, row: int, layer: int, kernel: torch.Tensor):
        if self.streams[row][layer] is None:
            self.streams[row][layer] = _conv_stream(kernel, self.backbone.block)
        return self.streams[row][layer]

    def begin(self, steps: torch.Tensor) -> None:
        self._lengths_before = self._lengths
        self._lengths = self._lengths + steps.sum(1).to(self._lengths.device)
        self._before = [[s.snapshot() if s is not None else None for s in row] for row in self.streams]
        self._fed = [[None] * len(self.backbone.layers) for _ in range(self.batch_size)]

    def work(self) -> int:
        """Multiply-adds spent by all streams so far."""
        return sum(s.work for row in self.streams for s in row if s is not None)

    def reorder(self, index):
        index = [int(i) for i in index]
        self.streams = [[copy.copy(s) for s in self.streams[i]] for i in index]
        self._lengths = self._lengths[torch.as_tensor(index, device=self._lengths.device)]
        if self._before is not None:
            self._before = [self._before[i] for i in index]
            self._fed = [self._fed[i] for i in index]
            self._lengths_before = self._lengths_before[torch.as_tensor(index, device=self._lengths.device)]
        self.batch_size = len(index)

    def rollback(self, lengths):
        lengths = as_lengths(lengths, self.batch_size, self._lengths.device)
        if bool((lengths > self._lengths).any()):
            raise ValueError(f"cannot roll forward: asked for lengths {lengths.tolist()} but the state holds {self._lengths.tolist()}")
        if bool((lengths == self._lengths).all()):
            return
        before = self._lengths_before
        if before is None or bool((lengths < before).any()):
            floor = before.tolist() if before is not None else self._lengths.tolist()
            raise ValueError(f"a futurefill state rolls back only within its most recent advance (to lengths >= {floor}), asked for {lengths.tolist()}")
        for b in range(self.batch_size):
            kept = int(lengths[b] - before[b])
            for i, stream in enumerate(self.streams[b]):
                if stream is None or self._fed[b][i] is None:
                    continue
                snap = self._before[b][i]
                if snap is None:
                    stream.restore(_conv_stream(stream.k, stream.block).snapshot())
                else:
                    stream.restore(snap)
                if kept:
                    stream.feed(self._fed[b][i][None, :kept])
        self._lengths = lengths.clone()

    def snapshot(self):
        return ([[copy.copy(s) for s in row] for row in self.streams], self._lengths.clone(), self._before, self._fed, self._lengths_before, self.batch_size)

    def restore(self, snap):
        streams, lengths, self._before, self._fed, self._lengths_before, self.batch_size = snap
        self.streams = [[copy.copy(s) for s in row] for row in streams]
        self._lengths = lengths.clone()


class ConvBlock(nn.Module):
    def __init__(self, cfg, layer_index: int):
        super().__init__()
        self.layer_index = layer_index
        D = cfg.d_model
        self.norm1 = nn.LayerNorm(D, eps=cfg.norm_eps)
        self.in_proj = nn.Linear(D, D)
        self.gate = nn.Linear(D, D)
        self.out_proj = nn.Linear(D, D)
        # explicit filters with an exponentially decaying envelope, spread over channels (slow to fast)
        rates = torch.exp(torch.linspace(math.log(1.0 / cfg.filter_length), math.log(0.5), D))
        envelope = torch.exp(-rates[:, None] * torch.arange(cfg.filter_length, dtype=torch.float32))
        self.filter = nn.Parameter(torch.randn(D, cfg.filter_length) * envelope * 0.3)
        self.skip = nn.Parameter(torch.ones(D))
        self.norm2 = nn.LayerNorm(D, eps=cfg.norm_eps)
        self.ffn = nn.Sequential(nn.Linear(D, cfg.ffn_mult * D), nn.GELU(), nn.Linear(cfg.ffn_mult * D, D))

    def convolve(self, u, state: FutureFillState | None, steps):
        if state is None:
            return kernels.call("fft_conv", u, self.filter.to(u.dtype), skip=self.skip.to(u.dtype))
        y = torch.zeros_like(u)
        for b in range(u.shape[0]):
            real = steps[b].nonzero().flatten()
            if real.numel() == 0:
                continue
            fed = u[b, real]
            stream = state.stream(b, self.layer_index, self.filter.to(u.dtype))
            y[b, real] = stream.feed(fed[None])[0].to(u.dtype) + fed * self.skip.to(u.dtype)
            state._fed[b][self.layer_index] = fed
        return y

    def forward(self, h, state=None, steps=None):
        xn = self.norm1(h)
        y = self.convolve(self.in_proj(xn), state, steps)
        h = h + self.out_proj(F.silu(self.gate(xn)) * y)
        return h + self.ffn(self.norm2(h))


class FutureFillBackbone(Backbone):
    """Gated long-convolution blocks; causal pattern only."""

    patterns = frozenset({"causal"})

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.block = NAIVE_BLOCK if cfg.decoding == "naive" else cfg.block_size
        self.layers = nn.ModuleList(ConvBlock(cfg, i) for i in range(cfg.n_layers))
        self.norm = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)

    def forward(self, h: torch.Tensor, *, pattern: AttentionPattern = CAUSAL, state: FutureFillState | None = None, valid: torch.Tensor | None = None) -> torch.Tensor:
        if not self.supports(pattern):
            raise ValueError(f"the futurefill backbone serves only the causal pattern (a causal convolution cannot look ahead), got '{pattern.kind}'")
        B, L, _ = h.shape
        if state is not None:
            steps = torch.ones(B, L, dtype=torch.bool, device=h.device) if valid is None else valid.to(h.device, torch.bool)
            state.begin(steps)
            for layer in self.layers:
                h = layer(h, state=state, steps=steps)
            return self.norm(h)
        order = None
        if valid is not None and not bool(valid.all()):
            # move each row's real tokens to the front (stable): padding then only trails, and a
            # causal convolution never looks at what trails
            order = torch.sort((~valid.to(h.device, torch.bool)).to(torch.int8), dim=1, stable=True).indices
            h = h.gather(1, order[..., None].expand_as(h))
        for layer in self.layers:
            h = layer(h)
        h = self.norm(h)
        if order is not None:
            h = torch.empty_like(h).scatter(1, order[..., None].expand_as(h), h)
        return h

    def init_state(self, batch_size: int, capacity: int = 256, device=None, dtype=None) -> FutureFillState:
        """One FutureFill stream per row and layer (created on first use); ``capacity`` is ignored."""
        param = next(self.parameters())
        return FutureFillState(self, batch_size, device=device if device is not None else param.device)


def build(config, ctx) -> FutureFillBackbone:
    return FutureFillBackbone(config)
