"""A tiny stand-in for the core's GenerativeModel (used only until the core transformer lands).

Rotary attention whose positions come from ``pattern.positions(index)`` and whose mask comes from
``pattern.allowed(q_index, kv_index)``; a KV cache with ``lengths`` and ``rollback``.
"""

from __future__ import annotations

import torch
from torch import nn


def _positions(pattern, index):
    fn = getattr(pattern, "positions", None)
    return fn(index) if fn is not None else index


def _rope(x, pos):
    d = x.shape[-1] // 2
    freq = 1.0 / (10000 ** (torch.arange(d, dtype=torch.float32) / d))
    ang = pos[..., None].float() * freq
    cos, sin = ang.cos(), ang.sin()
    a, b = x[..., :d], x[..., d:]
    return torch.cat([a * cos - b * sin, a * sin + b * cos], dim=-1)


class ToyState:
    def __init__(self, batch_size, capacity, layers, heads, head_dim):
        self.k = torch.zeros(layers, batch_size, heads, capacity, head_dim)
        self.v = torch.zeros_like(self.k)
        self.lengths = torch.zeros(batch_size, dtype=torch.long)

    def rollback(self, lengths):
        self.lengths = torch.as_tensor(lengths).expand_as(self.lengths).clone()


class ToyModel(nn.Module):
    def __init__(self, vocab_size=11, d_model=16, heads=2, layers=2):
        super().__init__()
        self.heads, self.head_dim = heads, d_model // heads
        self.emb = nn.Embedding(vocab_size, d_model)
        self.qkv = nn.ModuleList(nn.Linear(d_model, 3 * d_model) for _ in range(layers))
        self.out = nn.ModuleList(nn.Linear(d_model, d_model) for _ in range(layers))
        self.mlp = nn.ModuleList(nn.Sequential(nn.Linear(d_model, 2 * d_model), nn.GELU(), nn.Linear(2 * d_model, d_model)) for _ in range(layers))
        self.norm = nn.LayerNorm(d_model)
        self.lm = nn.Linear(d_model, vocab_size)

    def init_state(self, batch_size, capacity):
        return ToyState(batch_size, capacity, len(self.qkv), self.heads, self.head_dim)

    def forward(self, ids, *, pattern, state=None, valid=None):
        B, L = ids.shape
        h = self.emb(ids)
        offset = 0 if state is None else int(state.lengths[0])
        q_idx = torch.arange(offset, offset + L)
        kv_idx = torch.arange(offset + L)
        mask = pattern.allowed(q_idx[:, None], kv_idx[None, :])
        q_pos, kv_pos = _positions(pattern, q_idx), _positions(pattern, kv_idx)
        for i, (qkv, out, mlp) in enumerate(zip(self.qkv, self.out, self.mlp)):
            q, k, v = qkv(h).view(B, L, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
            q, k = _rope(q, q_pos), _rope(k, kv_pos[offset:])
            if state is not None:
                state.k[i, :, :, offset:offset + L] = k
                state.v[i, :, :, offset:offset + L] = v
                k, v = state.k[i, :, :, :offset + L], state.v[i, :, :, :offset + L]
            att = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            h = h + out(att.transpose(1, 2).reshape(B, L, -1))
            h = h + mlp(h)
        if state is not None:
            state.lengths += L
        return self.lm(self.norm(h))
