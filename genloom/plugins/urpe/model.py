"""A pre-norm transformer whose attention is URPE attention (relative positions only).

Each block: ``h + Attn(LN h)``, ``h + FFN(LN h)``. The attention projects queries, keys and values
per head and calls the ``urpe_attention`` op with its two per-head Toeplitz tables: the RPE bias b
(initialised to 0) and, with ``universal``, the learnable gain C (initialised to 1, so a fresh
URPE layer is exactly RPE attention); without ``universal`` C stays 1 (plain RPE attention, the
control). There is no absolute position anywhere: positions enter only as distances ``q - kv``,
clipped to ``max_distance``. Decoding keeps a :class:`~genloom.core.state.KVCache`; its positions
give the distances of cached keys, so cached decoding equals recomputation.
"""

from __future__ import annotations

import torch
from torch import nn

from genloom.core import kernels
from genloom.core.model import Backbone
from genloom.core.pattern import CAUSAL, AttentionPattern
from genloom.core.state import KVCache, begin_chunk
from genloom.toolkit.layers import PreNormBlock


class UrpeAttention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.n_heads, self.head_dim = cfg.n_heads, cfg.d_model // cfg.n_heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.out = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        span = 2 * cfg.max_distance + 1
        self.bias = nn.Parameter(torch.zeros(cfg.n_heads, span))
        gain = torch.ones(cfg.n_heads, span)
        if cfg.universal:
            self.gain = nn.Parameter(gain)
        else:
            self.register_buffer("gain", gain, persistent=False)

    def forward(self, x, *, pattern, positions, valid, cache, layer):
        B, L, _ = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.n_heads, self.head_dim).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        kw = dict(pattern=pattern, q_pos=positions)
        if cache is not None:
            k, v, kv_pos, kv_valid = cache.update(layer, k, v)
            kw.update(kv_pos=kv_pos, kv_valid=kv_valid)
        else:
            kw.update(kv_pos=positions, kv_valid=valid)
        out = kernels.call("urpe_attention", q, k, v, self.bias, self.gain, **kw)
        return self.out(out.transpose(1, 2).reshape(B, L, -1))


class UrpeTransformer(Backbone):
    """Pre-norm transformer with URPE (or plain RPE) attention; serves any attention pattern."""

    patterns = frozenset({"any"})

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.layers = nn.ModuleList(PreNormBlock(UrpeAttention(cfg), cfg.d_model, cfg.ffn_mult, cfg.norm_eps) for _ in range(cfg.n_layers))
        self.norm = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)

    def forward(self, h, *, pattern: AttentionPattern = CAUSAL, state: KVCache | None = None, valid=None):
        positions, valid = begin_chunk(h, state, valid)
        positions = pattern.positions(positions)
        for i, block in enumerate(self.layers):
            h = block(h, pattern=pattern, positions=positions, valid=valid, cache=state, layer=i)
        return self.norm(h)

    def init_state(self, batch_size: int, capacity: int = 256, device=None, dtype=None):
        cfg = self.cfg
        return KVCache(cfg.n_layers, batch_size, cfg.n_heads, cfg.d_model // cfg.n_heads, capacity, device=device, dtype=dtype or torch.float32)


def effective_attention(layer: UrpeAttention, x: torch.Tensor, pattern: AttentionPattern = CAUSAL) -> torch.Tensor:
    """(B, H, L, L): the matrix A that multiplies V in ``layer`` for inputs ``x`` (B, L, D), read off
    the op by feeding the identity as the values (the op is linear in V)."""
    B, L, _ = x.shape
    q, k, _ = layer.qkv(x).view(B, L, 3, layer.n_heads, layer.head_dim).unbind(2)
    eye = torch.eye(L, dtype=x.dtype, device=x.device).expand(B, layer.n_heads, L, L)
    pos = torch.arange(L, device=x.device).expand(B, L)
    return kernels.call("urpe_attention", q.transpose(1, 2), k.transpose(1, 2), eye, layer.bias, layer.gain, pattern=pattern, q_pos=pos, kv_pos=pos)


def build(config, ctx):
    return UrpeTransformer(config)
