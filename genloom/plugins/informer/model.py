"""Informer's blocks: ProbSparse attention, the distilling layer, the encoder-decoder.

ProbSparse attention, step by step, for queries Q (L_Q) and keys/values K, V (L_K), per head:

1. scores of every query against a set of keys (``sample`` of them while training, all at
   evaluation): ``S = Q K_sample^T / sqrt(d)``;
2. the sparsity measurement ``M_i = max_j S_ij - mean_j S_ij``; the u = min(L_Q, ceil(c ln L_Q))
   queries with the largest M are *active*;
3. the output of every query starts as the mean of V (a lazy query attends almost uniformly; with
   a causal mask: the mean of the values it may see);
4. the active queries get exact softmax attention over all keys (masked if causal), written over
   their rows.

With u = L_Q every query is active and the result is full attention exactly.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from genloom.core.model import Backbone
from genloom.core.pattern import FULL, AttentionPattern
from genloom.plugins.informer import InformerConfig


def active_count(length: int, factor: float) -> int:
    """u = min(L, ceil(c ln L)) (at least 1)."""
    return max(1, min(length, int(math.ceil(factor * math.log(max(length, 2))))))


def full_attention(q, k, v, causal: bool = False):
    """softmax(Q K^T / sqrt d) V over (B, H, L, E), optionally causal (query i sees keys <= i + L_K - L_Q)."""
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if causal:
        lq, lk = q.shape[-2], k.shape[-2]
        mask = torch.ones(lq, lk, dtype=torch.bool, device=q.device).tril(lk - lq)
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def sparsity_measurement(q, k, key_index=None):
    """M = max_j S_ij - mean_j S_ij over the keys ``key_index`` (all keys if None); (B, H, L_Q)."""
    keys = k if key_index is None else k[..., key_index, :]
    scores = q @ keys.transpose(-1, -2) / math.sqrt(q.shape[-1])
    return scores.max(-1).values - scores.mean(-1)


def lazy_output(v, length: int, causal: bool):
    """The output of lazy queries: mean(V), or the running mean of V under a causal mask (L_Q == L_K)."""
    if causal:
        counts = torch.arange(1, v.shape[-2] + 1, dtype=v.dtype, device=v.device)[:, None]
        return v.cumsum(-2) / counts
    return v.mean(-2, keepdim=True).expand(*v.shape[:-2], length, v.shape[-1])


def prob_sparse_attention(q, k, v, *, factor: float = 5.0, causal: bool = False, key_index=None, active: int | None = None):
    """ProbSparse attention over (B, H, L, E); ``active`` overrides u; returns (output, active query indices)."""
    length = q.shape[-2]
    u = active if active is not None else active_count(length, factor)
    measurement = sparsity_measurement(q, k, key_index)
    top = measurement.topk(u, dim=-1).indices  # (B, H, u)
    out = lazy_output(v, length, causal).clone()
    q_active = torch.gather(q, -2, top[..., None].expand(-1, -1, -1, q.shape[-1]))
    scores = q_active @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # (B, H, u, L_K)
    if causal:
        keys = torch.arange(k.shape[-2], device=q.device)
        scores = scores.masked_fill(keys[None, None, None, :] > top[..., None], float("-inf"))
    out.scatter_(-2, top[..., None].expand(-1, -1, -1, v.shape[-1]), torch.softmax(scores, -1) @ v)
    return out, top


class Attention(nn.Module):
    """Multi-head attention whose core is ProbSparse (``sparse``) or full."""

    def __init__(self, d_model: int, n_heads: int, factor: float, sparse: bool = True, causal: bool = False):
        super().__init__()
        self.n_heads, self.factor, self.sparse, self.causal = n_heads, factor, sparse, causal
        self.query, self.key, self.value, self.out = (nn.Linear(d_model, d_model) for _ in range(4))

    def _heads(self, x):
        return x.view(x.shape[0], x.shape[1], self.n_heads, -1).transpose(1, 2)

    def forward(self, x, memory=None):
        memory = x if memory is None else memory
        q, k, v = self._heads(self.query(x)), self._heads(self.key(memory)), self._heads(self.value(memory))
        if self.sparse:
            key_index = None
            if self.training:  # estimate M from c ln L_K sampled keys (all keys at evaluation: deterministic)
                count = active_count(k.shape[-2], self.factor)
                key_index = torch.randint(0, k.shape[-2], (count,), device=k.device)
            out, _ = prob_sparse_attention(q, k, v, factor=self.factor, causal=self.causal, key_index=key_index)
        else:
            out = full_attention(q, k, v, causal=self.causal)
        return self.out(out.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1))


class DistillingLayer(nn.Module):
    """Conv1d(k=3, circular) -> BatchNorm -> ELU -> MaxPool(k=3, stride 2): L -> ceil(L / 2)."""

    def __init__(self, d_model: int):
        super().__init__()
        self.conv = nn.Conv1d(d_model, d_model, 3, padding=1, padding_mode="circular")
        self.norm = nn.BatchNorm1d(d_model)
        self.pool = nn.MaxPool1d(3, stride=2, padding=1)

    def forward(self, x):
        return self.pool(nn.functional.elu(self.norm(self.conv(x.transpose(1, 2))))).transpose(1, 2)


def _ffn(d_model, hidden):
    return nn.Sequential(nn.Linear(d_model, hidden), nn.GELU(), nn.Linear(hidden, d_model))


class EncoderLayer(nn.Module):
    def __init__(self, config: InformerConfig):
        super().__init__()
        self.attention = Attention(config.d_model, config.n_heads, config.factor, sparse=True)
        self.ffn = _ffn(config.d_model, config.ffn_hidden)
        self.norm1, self.norm2 = nn.LayerNorm(config.d_model), nn.LayerNorm(config.d_model)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        x = self.norm1(x + self.dropout(self.attention(x)))
        return self.norm2(x + self.dropout(self.ffn(x)))


class DecoderLayer(nn.Module):
    def __init__(self, config: InformerConfig):
        super().__init__()
        self.self_attention = Attention(config.d_model, config.n_heads, config.factor, sparse=True, causal=True)
        self.cross_attention = Attention(config.d_model, config.n_heads, config.factor, sparse=False)
        self.ffn = _ffn(config.d_model, config.ffn_hidden)
        self.norms = nn.ModuleList(nn.LayerNorm(config.d_model) for _ in range(3))
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x, memory):
        x = self.norms[0](x + self.dropout(self.self_attention(x)))
        x = self.norms[1](x + self.dropout(self.cross_attention(x, memory)))
        return self.norms[2](x + self.dropout(self.ffn(x)))


def sinusoidal_positions(positions: torch.Tensor, d_model: int) -> torch.Tensor:
    """The Transformer's sin/cos position code for integer ``positions`` (L,) -> (L, d_model)."""
    frequencies = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float64) * (-math.log(10000.0) / d_model))
    angles = positions.double()[:, None] * frequencies[None]
    code = torch.zeros(len(positions), d_model, dtype=torch.float64)
    code[:, 0::2] = torch.sin(angles)
    code[:, 1::2] = torch.cos(angles[:, : d_model // 2])
    return code


class Informer(Backbone):
    """Embedded lookback (B, L, d) -> decoder output over ``label_len + horizon`` steps (B, label_len + horizon, d)."""

    patterns = frozenset({"full"})

    def __init__(self, config: InformerConfig):
        super().__init__()
        self.config = config
        self.d_model = config.d_model
        self.label_len, self.horizon = config.label_len, config.horizon
        self.encoder = nn.ModuleList(EncoderLayer(config) for _ in range(config.encoder_layers))
        self.distilling = nn.ModuleList(DistillingLayer(config.d_model) for _ in range(config.encoder_layers - 1)) if config.distil else None
        self.encoder_norm = nn.LayerNorm(config.d_model)
        self.decoder = nn.ModuleList(DecoderLayer(config) for _ in range(config.decoder_layers))
        self.decoder_norm = nn.LayerNorm(config.d_model)

    def encode(self, h: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.encoder):
            h = layer(h)
            if self.distilling is not None and i < len(self.distilling):
                h = self.distilling[i](h)
        return self.encoder_norm(h)

    def forward(self, h: torch.Tensor, *, pattern: AttentionPattern = FULL, state=None, valid=None) -> torch.Tensor:
        if state is not None:
            raise ValueError("informer forecasts the whole horizon in one pass; it has no incremental state")
        if pattern.kind != "full":
            raise ValueError(f"informer reads the whole lookback (pattern 'full'), got '{pattern.kind}'")
        batch, length, d = h.shape
        if length < self.label_len:
            raise ValueError(f"informer needs at least label_len={self.label_len} input steps, got {length}")
        positions = sinusoidal_positions(torch.arange(length + self.horizon), d).to(h)
        memory = self.encode(h + positions[:length])
        placeholders = torch.zeros(batch, self.horizon, d, dtype=h.dtype, device=h.device)
        x = torch.cat([h[:, length - self.label_len:], placeholders], 1) + positions[length - self.label_len:]
        for layer in self.decoder:
            x = layer(x, memory)
        return self.decoder_norm(x)

    def init_state(self, batch_size: int, capacity: int = 256, device=None, dtype=None):
        raise NotImplementedError("informer forecasts the whole horizon in one pass; it has no incremental state")


def build(config: InformerConfig, ctx) -> Informer:
    if config.horizon is None or config.label_len is None:
        config.bind(ctx)
    ctx.set("d_model", config.d_model)
    return Informer(config)
