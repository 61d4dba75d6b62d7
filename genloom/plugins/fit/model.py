"""The FIT backbone in causal (autoregressive) mode: group-local layers, latent read, global
layers over the latents, latent write.

The data tokens are cut into groups of ``group_size`` positions; each group owns ``n_latents``
latent tokens (a learned start value plus a learned group embedding). Every FIT block runs:

1. **local layers** on the data tokens, self-attention inside each group only (the core's
   :class:`~genloom.core.pattern.GroupLocalPattern`, causal inside the group), each with a
   feed-forward;
2. **read**: the latents of group g cross-attend to the data tokens of group g (all of them);
3. **global layers** on the latents of all groups, group-causally (the latents of group g read the
   latents of groups <= g: a block-causal pattern with blocks of ``n_latents``), each with a
   feed-forward;
4. **write**: the data tokens of group g cross-attend to the latents of group g - 1 (group 0 reads
   nothing). The paper's write reads the group's own latents; in causal mode they have read the
   whole group, future tokens included, so the write is shifted by one group.

So a data token reads its own group up to itself directly and every earlier group only through
latent tokens, and its output at position t depends on inputs at positions <= t only.

Each attention runs on groups reshaped into batch rows (``attention: reshape``) or on flat
sequences under the core's patterns (``attention: mask``); both compute the same function.
Decoding keeps the inputs, the latents of every finished group (per block; computed once, when the
next group's first token arrives) and a KV cache of the local layers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from genloom.core import kernels
from genloom.core.model import Backbone
from genloom.core.pattern import CAUSAL, FULL, AttentionPattern, block_causal, group_local
from genloom.core.state import KVCache, State


class Attention(nn.Module):
    """Multi-head attention of queries from ``x`` to keys/values from ``y`` (self-attention: y = x)."""

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads, self.head_dim = n_heads, d_model // n_heads
        self.q = nn.Linear(d_model, d_model, bias=False)
        self.kv = nn.Linear(d_model, 2 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x, y=None, *, pattern: AttentionPattern = FULL, q_pos=None, cache: KVCache | None = None, layer: int = 0):
        y = x if y is None else y
        N, Lq, D = x.shape
        q = self.q(x).view(N, Lq, self.n_heads, self.head_dim).transpose(1, 2)
        k, v = self.kv(y).view(N, y.shape[1], 2, self.n_heads, self.head_dim).unbind(2)
        k, v = k.transpose(1, 2), v.transpose(1, 2)
        if cache is None:
            out = kernels.call("attention", q, k, v, pattern=pattern)
        else:
            k, v, kv_pos, kv_valid = cache.update(layer, k, v)
            out = kernels.call("attention", q, k, v, pattern=pattern, q_pos=q_pos, kv_pos=kv_pos, kv_valid=kv_valid)
        return self.out(out.transpose(1, 2).reshape(N, Lq, D))


class FeedForward(nn.Module):
    def __init__(self, d_model: int, mult: int):
        super().__init__()
        self.up, self.down = nn.Linear(d_model, mult * d_model), nn.Linear(mult * d_model, d_model)

    def forward(self, x):
        return self.down(F.gelu(self.up(x)))


class SelfLayer(nn.Module):
    """Pre-norm self-attention and feed-forward."""

    def __init__(self, cfg):
        super().__init__()
        self.attn_norm, self.ffn_norm = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps), nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.attn = Attention(cfg.d_model, cfg.n_heads)
        self.ffn = FeedForward(cfg.d_model, cfg.ffn_mult)

    def forward(self, x, **kw):
        x = x + self.attn(self.attn_norm(x), **kw)
        return x + self.ffn(self.ffn_norm(x))


class CrossLayer(nn.Module):
    """Pre-norm cross-attention (queries ``x``, keys ``y``), with an optional feed-forward."""

    def __init__(self, cfg, ffn: bool):
        super().__init__()
        self.q_norm, self.kv_norm = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps), nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.attn = Attention(cfg.d_model, cfg.n_heads)
        self.ffn = nn.Sequential(nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps), FeedForward(cfg.d_model, cfg.ffn_mult)) if ffn else None

    def update(self, x, y):
        return self.attn(self.q_norm(x), self.kv_norm(y))

    def forward(self, x, y):
        x = x + self.update(x, y)
        return x + self.ffn(x) if self.ffn is not None else x


class FitBlock(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.local = nn.ModuleList(SelfLayer(cfg) for _ in range(cfg.local_layers))
        self.read = CrossLayer(cfg, ffn=True)
        self.globals = nn.ModuleList(SelfLayer(cfg) for _ in range(cfg.global_layers))
        self.write = CrossLayer(cfg, ffn=False)


class FitState(State):
    """The local layers' KV cache, the inputs seen so far, and per block the latents of every
    finished group (``latent_groups[b]`` of them for row b). The latents of group g depend on
    positions < (g + 1) * group_size only, so a rollback to n tokens keeps n // group_size groups."""

    rollback_any = True

    def __init__(self, cache: KVCache, cfg, capacity: int, device=None, dtype=torch.float32):
        self.cache, self.group_size = cache, cfg.group_size
        B = cache.batch_size
        self.history = torch.zeros(B, capacity, cfg.d_model, device=device, dtype=dtype)
        groups = -(-capacity // cfg.group_size)
        self.latents = [torch.zeros(B, groups, cfg.n_latents, cfg.d_model, device=device, dtype=dtype) for _ in range(cfg.n_blocks)]
        self.latent_groups = torch.zeros(B, dtype=torch.long, device=device)

    @property
    def lengths(self) -> torch.Tensor:
        return self.cache.lengths

    def ensure(self, positions: int) -> None:
        if positions > self.history.shape[1]:
            extra = max(positions, 2 * self.history.shape[1]) - self.history.shape[1]
            self.history = F.pad(self.history, (0, 0, 0, extra))
        groups = -(-self.history.shape[1] // self.group_size)
        if groups > self.latents[0].shape[1]:
            self.latents = [F.pad(t, (0, 0, 0, 0, 0, groups - t.shape[1])) for t in self.latents]

    def write(self, h, positions, valid) -> None:
        self.ensure(int(positions.max()) + 1 if positions.numel() else 0)
        index = positions.clamp_min(0)[..., None].expand_as(h)
        self.history = self.history.scatter(1, index, torch.where(valid[..., None], h.to(self.history.dtype), self.history.gather(1, index)))

    def reorder(self, index) -> None:
        index = index.to(self.history.device)
        self.cache.reorder(index)
        self.history = self.history.index_select(0, index)
        self.latents = [t.index_select(0, index) for t in self.latents]
        self.latent_groups = self.latent_groups.index_select(0, index)

    def rollback(self, lengths) -> None:
        self.cache.rollback(lengths)
        self.latent_groups = torch.minimum(self.latent_groups, self.cache.lengths // self.group_size)

    def snapshot(self):
        return (self.cache.snapshot(), self.history.clone(), [t.clone() for t in self.latents], self.latent_groups.clone())

    def restore(self, snap) -> None:
        cache, history, latents, groups = snap
        self.cache.restore(cache)
        self.history, self.latents, self.latent_groups = history.clone(), [t.clone() for t in latents], groups.clone()


class Fit(Backbone):
    """FIT in causal mode over a flat sequence (raster-order pixels, bytes...)."""

    patterns = frozenset({"causal"})

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.position = nn.Embedding(cfg.max_length, cfg.d_model)
        self.latent_start = nn.Parameter(torch.randn(cfg.n_latents, cfg.d_model) * 0.02)
        self.group_embedding = nn.Embedding(-(-cfg.max_length // cfg.group_size), cfg.d_model)
        self.blocks = nn.ModuleList(FitBlock(cfg) for _ in range(cfg.n_blocks))
        self.norm = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        for table in (self.position.weight, self.group_embedding.weight):
            nn.init.normal_(table, std=0.02)

    def _positions(self, positions):
        if positions.numel() and int(positions.max()) >= self.cfg.max_length:
            raise ValueError(f"position {int(positions.max())} is past max_length={self.cfg.max_length} (backbone.max_length)")
        return self.position(positions)

    def _local(self, layer, x, G):
        """A local layer over (B, G * n, D): inside each group, causally."""
        B, L, D = x.shape
        n = self.cfg.group_size
        if self.cfg.attention == "reshape":
            return layer(x.reshape(B * G, n, D), pattern=CAUSAL).view(B, L, D)
        return layer(x, pattern=group_local(n, causal=True))

    def _global(self, layer, z):
        """A global layer over the latents (B, G, m, D): group g reads groups <= g."""
        B, G, m, D = z.shape
        return layer(z.reshape(B, G * m, D), pattern=block_causal(block_size=m)).view(B, G, m, D)

    def _write(self, block, x, z):
        """Data tokens of group g read the latents of group g - 1; group 0 reads nothing."""
        B, G, m, D = z.shape
        n = self.cfg.group_size
        previous = torch.cat([torch.zeros_like(z[:, :1]), z[:, :-1]], 1)
        update = block.write.update(x.reshape(B * G, n, D), previous.reshape(B * G, m, D)).view(B, G, n, D)
        update = update * (torch.arange(G, device=x.device) > 0).to(update.dtype)[None, :, None, None]
        return x + update.reshape(B, G * n, D)

    def full(self, h):
        """(output (B, L, D), per-block latents [(B, G, m, D)]) of the whole sequence ``h``."""
        B, L, D = h.shape
        n, m = self.cfg.group_size, self.cfg.n_latents
        G = -(-L // n)
        x = F.pad(h, (0, 0, 0, G * n - L)) + self._positions(torch.arange(G * n, device=h.device))
        z = (self.latent_start[None, None] + self.group_embedding(torch.arange(G, device=h.device))[None, :, None]).expand(B, G, m, D)
        latents = []
        for block in self.blocks:
            for layer in block.local:
                x = self._local(layer, x, G)
            z = block.read(z.reshape(B * G, m, D), x.reshape(B * G, n, D)).view(B, G, m, D)
            for layer in block.globals:
                z = self._global(layer, z)
            latents.append(z)
            x = self._write(block, x, z)
        return self.norm(x[:, :L]), latents

    def forward(self, h, *, pattern: AttentionPattern = CAUSAL, state: FitState | None = None, valid=None):
        if pattern.kind != "causal":
            raise ValueError(f"this FIT backbone runs in causal mode only; it cannot serve the '{pattern.kind}' pattern")
        if state is None and valid is not None:  # padding must not shift positions: decode into a fresh state
            state = self.init_state(h.shape[0], h.shape[1], device=h.device, dtype=h.dtype)
        if state is None:
            return self.full(h)[0]
        return self._advance(h, state, valid)

    def _advance(self, h, state: FitState, valid):
        n = self.cfg.group_size
        positions, valid = state.cache.begin(valid, h.shape[1])
        state.write(h, positions, valid)
        need = (state.cache.lengths - 1).clamp_min(0) // n  # the latest group begun needs all earlier groups' latents
        if bool((need > state.latent_groups).any()):  # once per finished group
            G = int(need.max())
            _, fresh = self.full(state.history[:, : G * n])
            group = torch.arange(G, device=h.device)
            new = ((group[None] >= state.latent_groups[:, None]) & (group[None] < need[:, None]))[..., None, None]
            for b, z in enumerate(fresh):
                state.latents[b][:, :G] = torch.where(new, z, state.latents[b][:, :G])
            state.latent_groups = torch.maximum(state.latent_groups, need)
        x = h + self._positions(positions)
        group = positions // n
        index = (group - 1).clamp_min(0)
        first = (group == 0).to(x.dtype)[..., None]
        B, L, D = x.shape
        cache_layer = 0
        for b, block in enumerate(self.blocks):
            for layer in block.local:
                x = layer(x, pattern=group_local(n, causal=True), q_pos=positions, cache=state.cache, layer=cache_layer)
                cache_layer += 1
            z = state.latents[b]
            previous = z.gather(1, index[..., None, None].expand(B, L, *z.shape[2:]))  # (B, L, m, D)
            update = block.write.update(x.reshape(B * L, 1, D), previous.reshape(B * L, -1, D)).view(B, L, D)
            x = x + update * (1 - first)
        return self.norm(x)

    def init_state(self, batch_size: int, capacity: int = 256, device=None, dtype=None) -> FitState:
        cfg = self.cfg
        dtype = dtype or next(self.parameters()).dtype
        device = device or next(self.parameters()).device
        cache = KVCache(cfg.n_blocks * cfg.local_layers, batch_size, cfg.n_heads, cfg.d_model // cfg.n_heads, capacity, device=device, dtype=dtype)
        return FitState(cache, cfg, capacity, device=device, dtype=dtype)


def attention_entries(length: int, group_size: int, n_latents: int, local_layers: int, global_layers: int, n_blocks: int) -> dict[str, int]:
    """(query, key) pairs one causal pass scores, counted from the masks, against a causal
    transformer with as many attention layers over the data."""
    G = -(-length // group_size)
    local = int(group_local(group_size).dense(length).sum())
    read = G * n_latents * group_size
    glob = int(block_causal(block_size=n_latents).dense(G * n_latents).sum())
    write = (G - 1) * group_size * n_latents
    per_block = local_layers * local + read + global_layers * glob + write
    full = int(torch.ones(length, length).tril().sum())
    return {"fit": n_blocks * per_block, "full_causal": n_blocks * (local_layers + global_layers) * full}


def build(config, ctx):
    return Fit(config)
