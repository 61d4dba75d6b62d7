"""A decoder-only transformer in the Llama layout.

RMSNorm pre-norm blocks, rotary position embeddings (the rotate-half convention), SwiGLU
feed-forward, grouped-query attention through the kernel dispatcher, and a ragged KV cache
(:class:`genloom.core.state.KVCache`) for step-wise decoding. Parameter names follow Llama's so a
Hugging Face checkpoint converts by renaming (:mod:`genloom.core.hf`).

Three cache features, each off by default (docs/generation.md, "KV-cache policies"):

- the config's ``cache_policy`` node (``ctx.cache_policy``) gives every cache a
  :class:`~genloom.core.cache_policy.CachePolicy` (a :class:`~genloom.core.cache_policy.ManagedKVCache`);
  attention passes its queries to ``update`` and attends to what it returns (a retrieved subset);
- ``kv_source`` shares keys/values across layers: a reading layer has no key/value projections and
  attends with its source layer's keys/values (the same cache storage);
- a cache's layer-skip mask (:meth:`~genloom.core.state.KVCache.set_layer_skip`, or a router
  asked at the prefill through :meth:`~genloom.core.state.KVCache.route`) makes a layer the
  identity for the rows that skip it: the block runs on the other rows only and writes only their
  keys/values.
"""

from __future__ import annotations

import torch
from torch import nn

from genloom.core import kernels
from genloom.core.model import Backbone
from genloom.core.pattern import CAUSAL, AttentionPattern
from genloom.core.cache_policy import FullPolicy, ManagedKVCache
from genloom.core.state import KVCache, begin_chunk


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class Rotary(nn.Module):
    def __init__(self, head_dim: int, theta: float):
        super().__init__()
        inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
        self.register_buffer("inv_freq", inv, persistent=False)

    def forward(self, positions: torch.Tensor, dtype):
        freqs = positions[..., None].float() * self.inv_freq  # (B, L, Dh/2)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype)[:, None], emb.sin().to(dtype)[:, None]  # (B, 1, L, Dh)


class Attention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int, *, owns_kv: bool = True):
        super().__init__()
        self.n_heads, self.n_kv_heads = n_heads, n_kv_heads
        self.head_dim = d_model // n_heads
        self.q_proj = nn.Linear(d_model, n_heads * self.head_dim, bias=False)
        if owns_kv:  # a layer that reads another layer's keys/values (kv_source) has no projections of its own
            self.k_proj = nn.Linear(d_model, n_kv_heads * self.head_dim, bias=False)
            self.v_proj = nn.Linear(d_model, n_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(n_heads * self.head_dim, d_model, bias=False)

    def forward(self, x, *, pattern, rope, positions, valid, cache, layer, source=None, shared=None, rows=None):
        B, L, _ = x.shape
        q = self.q_proj(x).view(B, L, self.n_heads, self.head_dim).transpose(1, 2)
        if rope is not None:
            cos, sin = rope
            q = q * cos + rotate_half(q) * sin
        if source is None:
            k = self.k_proj(x).view(B, L, self.n_kv_heads, self.head_dim).transpose(1, 2)
            v = self.v_proj(x).view(B, L, self.n_kv_heads, self.head_dim).transpose(1, 2)
            if rope is not None:
                k = k * cos + rotate_half(k) * sin
            if shared is not None:
                shared[layer] = (k, v)
        elif cache is None:
            k, v = shared[source]  # the source layer's keys/values of this same forward
        if cache is not None:
            extra = {}
            if cache.policy is not None:
                extra["q"] = q
            if rows is not None:
                extra["rows"] = rows
            if source is None:
                k, v, kv_pos, kv_valid = cache.update(layer, k, v, **extra)
            else:
                k, v, kv_pos, kv_valid = cache.read(layer, **extra)
            out = kernels.call("attention", q, k, v, pattern=pattern, q_pos=positions, kv_pos=kv_pos, kv_valid=kv_valid)
        elif valid is None:
            out = kernels.call("attention", q, k, v, pattern=pattern)
        else:
            out = kernels.call("attention", q, k, v, pattern=pattern, q_pos=positions, kv_pos=positions, kv_valid=valid)
        return self.o_proj(out.transpose(1, 2).reshape(B, L, -1))


class MLP(nn.Module):
    def __init__(self, d_model: int, hidden: int):
        super().__init__()
        self.gate_proj = nn.Linear(d_model, hidden, bias=False)
        self.up_proj = nn.Linear(d_model, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x):
        return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg, hidden: int, *, owns_kv: bool = True):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.self_attn = Attention(cfg.d_model, cfg.n_heads, cfg.n_kv_heads or cfg.n_heads, owns_kv=owns_kv)
        self.post_attention_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = MLP(cfg.d_model, hidden)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x, **kw):
        x = x + self.dropout(self.self_attn(self.input_layernorm(x), **kw))
        return x + self.dropout(self.mlp(self.post_attention_layernorm(x)))


class Transformer(Backbone):
    """Pre-norm transformer; serves any attention pattern (the kernels read the pattern value)."""

    patterns = frozenset({"any"})
    static_cache = True  # the cache is reached only through begin/update: StaticKVCache fits

    def __init__(self, cfg, cache_policy=None):
        super().__init__()
        self.cfg = cfg
        self.cache_policy = cache_policy
        """The policy every cache of this backbone gets (None or the full policy: the plain KVCache)."""
        self.kv_source = list(getattr(cfg, "kv_source", None) or range(cfg.n_layers))
        hidden = cfg.ffn_hidden or 32 * -(-int(8 * cfg.d_model / 3) // 32)
        self.layers = nn.ModuleList(Block(cfg, hidden, owns_kv=self.kv_source[i] == i) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps) if cfg.final_norm else nn.Identity()
        self.rotary = Rotary(cfg.d_model // cfg.n_heads, cfg.rope_theta) if cfg.rope else None
        self.apply(self._init)
        std = 0.02 / (2 * cfg.n_layers) ** 0.5  # scaled init of the residual projections (GPT-2)
        for block in self.layers:
            nn.init.normal_(block.self_attn.o_proj.weight, std=std)
            nn.init.normal_(block.mlp.down_proj.weight, std=std)

    @staticmethod
    def _init(m):
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)

    def forward(self, h, *, pattern: AttentionPattern = CAUSAL, state: KVCache | None = None, valid=None):
        positions, valid = begin_chunk(h, state, valid)
        rope = self.rotary(pattern.positions(positions), h.dtype) if self.rotary is not None else None
        shared = {} if any(s != i for i, s in enumerate(self.kv_source)) else None
        route = getattr(state, "route", None)
        for i, block in enumerate(self.layers):
            source = self.kv_source[i] if self.kv_source[i] != i else None
            skip = route(i, h, valid) if route is not None else None
            if skip is None:
                h = block(h, pattern=pattern, rope=rope, positions=positions, valid=valid, cache=state, layer=i, source=source, shared=shared)
                continue
            rows = (~skip).nonzero().flatten()
            if rows.numel():  # the rows that keep layer i run it; for the others it is the identity
                part = block(h[rows], pattern=pattern, rope=tuple(t[rows] for t in rope) if rope is not None else None, positions=positions[rows],
                             valid=valid[rows] if valid is not None else None, cache=state, layer=i, source=source, shared=shared, rows=rows)
                h = h.index_copy(0, rows, part)
        return self.norm(h)

    def init_state(self, batch_size: int, capacity: int = 256, device=None, dtype=None):
        cfg = self.cfg
        shape = (cfg.n_layers, batch_size, cfg.n_kv_heads or cfg.n_heads, cfg.d_model // cfg.n_heads, capacity)
        kv_source = self.kv_source if any(s != i for i, s in enumerate(self.kv_source)) else None
        policy = self.cache_policy
        if policy is None or type(policy) is FullPolicy:
            return KVCache(*shape, device=device, dtype=dtype or torch.float32, kv_source=kv_source)
        return ManagedKVCache(*shape, device=device, dtype=dtype or torch.float32, kv_source=kv_source, policy=policy)


def build(config, ctx):
    return Transformer(config, ctx.get("cache_policy"))
