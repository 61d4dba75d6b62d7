"""A pre-norm causal transformer whose attention is Combiner-Fixed attention.

Each block: ``h + Attn(LN h)``, ``h + FFN(LN h)``. The attention projects queries, keys and values
per head, applies rotary position embeddings to queries and keys, and calls the
``combiner_attention`` op with its per-head local-expectation vector ``w`` and ``region_size``.
Decoding keeps a :class:`~genloom.core.state.KVCache`: the new queries read the cached keys of
their own region directly and the abstractions of the earlier regions, rebuilt from the cache
(positions give the regions), so cached decoding equals recomputation.
"""

from __future__ import annotations

import torch
from torch import nn

from genloom.core import kernels
from genloom.core.model import Backbone
from genloom.core.pattern import CAUSAL, AttentionPattern
from genloom.core.state import KVCache, begin_chunk
from genloom.toolkit.layers import PreNormBlock


def rotate(x, positions, theta: float):
    """Rotary embedding (rotate-half convention) of (B, H, L, Dh) at (B, L) positions."""
    half = x.shape[-1] // 2
    freqs = theta ** (-torch.arange(half, device=x.device, dtype=torch.float64) / half)
    angle = (positions[..., None].double() * freqs)[:, None].to(x.dtype)  # (B, 1, L, half)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * angle.cos() - x2 * angle.sin(), x2 * angle.cos() + x1 * angle.sin()], -1)


class CombinerAttention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.n_heads, self.head_dim = cfg.n_heads, cfg.d_model // cfg.n_heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.out = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.w = nn.Parameter(torch.zeros(cfg.n_heads, self.head_dim))  # 0: a uniform local expectation at first

    def forward(self, x, *, positions, valid, cache, layer):
        B, L, _ = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.n_heads, self.head_dim).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        q, k = rotate(q, positions, self.cfg.rope_theta), rotate(k, positions, self.cfg.rope_theta)
        kw = dict(region_size=self.cfg.region_size)
        if cache is not None:
            k, v, kv_pos, kv_valid = cache.update(layer, k, v)
            kw.update(q_pos=positions, kv_pos=kv_pos, kv_valid=kv_valid)
        elif valid is not None:
            kw.update(q_pos=positions, kv_pos=positions, kv_valid=valid)
        out = kernels.call("combiner_attention", q, k, v, self.w, **kw)
        return self.out(out.transpose(1, 2).reshape(B, L, -1))


class CombinerTransformer(Backbone):
    """Causal pre-norm transformer with Combiner-Fixed attention."""

    patterns = frozenset({"causal"})

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.layers = nn.ModuleList(PreNormBlock(CombinerAttention(cfg), cfg.d_model, cfg.ffn_mult, cfg.norm_eps) for _ in range(cfg.n_layers))
        self.norm = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)

    def forward(self, h, *, pattern: AttentionPattern = CAUSAL, state: KVCache | None = None, valid=None):
        if pattern.kind != "causal":
            raise ValueError(f"combiner attention is causal here; it cannot serve the '{pattern.kind}' pattern")
        positions, valid = begin_chunk(h, state, valid)
        for i, block in enumerate(self.layers):
            h = block(h, positions=positions, valid=valid, cache=state, layer=i)
        return self.norm(h)

    def init_state(self, batch_size: int, capacity: int = 256, device=None, dtype=None):
        cfg = self.cfg
        return KVCache(cfg.n_layers, batch_size, cfg.n_heads, cfg.d_model // cfg.n_heads, capacity, device=device, dtype=dtype or torch.float32)


def build(config, ctx):
    return CombinerTransformer(config)
