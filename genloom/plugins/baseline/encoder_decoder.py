"""An encoder-decoder transformer over the prefix-LM layout (the encoder-decoder form of source conditioning).

The data, the objective and every decoder stay those of the prefix LM: a sequence is
``[source block of S ids | target]`` and the objective's pattern is ``prefix(S)``
(docs/plugin-guide.md, "Conditional generation"). This backbone splits the sequence by position:

- the **encoder** (bidirectional self-attention, its own layers and final norm) reads positions
  ``0 .. S-1``, the whole source block at once;
- the **decoder** (causal self-attention, cross-attention to the encoder's output, feed-forward)
  reads positions ``S-1 ..``: the last source id is its start token, so its output at position
  ``S-1`` predicts target[0], exactly the next-token layout of the prefix LM;
- the output at positions ``0 .. S-2`` is the encoder's (nothing is scored there).

Step-wise decoding holds an :class:`~genloom.core.state.EncoderMemoryState`: the decoder's KV cache
plus each decoder layer's cross-attention keys/values, computed once per request when its source
block arrives (the encoder never runs again for that row) and carried through reorder, rollback,
keep, extend and snapshot. Positions are absolute everywhere (rotary embeddings, the pattern the
decoder's self-attention applies), so a token tree or any causal pattern a decoder passes means
what it means for the prefix LM.

Layers are those of :mod:`genloom.plugins.baseline.transformer` (RMSNorm pre-norm, rotary
embeddings, SwiGLU, grouped-query attention through the kernel dispatcher); the cross-attention
rotates its keys to the source positions ``0 .. S-1`` (once, with the memory) and its queries to
their absolute positions, so source and target share one positional frame as in the prefix LM (an
encoder-decoder without positions in the cross-attention must find source positions from content
alone; on the reverse task it did not learn in the same budget, docs/seq2seq.md).
"""

from __future__ import annotations

import torch
from torch import nn

from genloom.core import kernels
from genloom.core.cache_policy import FullPolicy, ManagedKVCache
from genloom.core.errors import ConfigError
from genloom.core.model import Backbone
from genloom.core.pattern import FULL, AttentionPattern
from genloom.core.state import EncoderMemoryState, KVCache

from .transformer import MLP, Block, RMSNorm, Rotary, rotate_half

_REFUSED = ("full", "block_causal")  # patterns that would let a target position see later targets


class _Projections(nn.Module):
    """Query, key, value and output projections (grouped key/value heads), no bias."""

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int):
        super().__init__()
        self.n_heads, self.n_kv_heads = n_heads, n_kv_heads
        self.head_dim = d_model // n_heads
        self.q_proj = nn.Linear(d_model, n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(d_model, n_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(d_model, n_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(n_heads * self.head_dim, d_model, bias=False)


class SelfAttention(_Projections):
    """The decoder's causal self-attention; with a cache, keys carry absolute positions (cache + offset)."""

    def forward(self, x, *, pattern, rope, positions, valid, cache, layer, offset):
        B, L, _ = x.shape
        q = self.q_proj(x).view(B, L, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, L, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, L, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if rope is not None:
            cos, sin = rope
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
        if cache is not None:
            k, v, kv_pos, kv_valid = cache.update(layer, k, v, **({"q": q} if cache.policy is not None else {}))
            kv_pos = kv_pos + offset  # the decoder cache counts from its start token at position S-1
        else:
            kv_pos, kv_valid = positions, valid
        out = kernels.call("attention", q, k, v, pattern=pattern, q_pos=positions, kv_pos=kv_pos, kv_valid=kv_valid)
        return self.o_proj(out.transpose(1, 2).reshape(B, L, -1))


class CrossAttention(_Projections):
    """Attention from decoder queries to the encoder memory (every source position, no mask)."""

    def memory(self, encoded: torch.Tensor, rope=None) -> tuple[torch.Tensor, torch.Tensor]:
        """This layer's keys and values (B, H_kv, S, Dh) of the encoder output (B, S, D): once per
        request. ``rope``: the source positions' rotary (cos, sin), applied to the keys here."""
        B, S, _ = encoded.shape
        k = self.k_proj(encoded).view(B, S, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(encoded).view(B, S, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if rope is not None:
            cos, sin = rope
            k = k * cos + rotate_half(k) * sin
        return k, v

    def forward(self, x, k, v, rope=None):
        B, L, _ = x.shape
        q = self.q_proj(x).view(B, L, self.n_heads, self.head_dim).transpose(1, 2)
        if rope is not None:  # the queries' absolute positions: source and target share one positional frame
            cos, sin = rope
            q = q * cos + rotate_half(q) * sin
        out = kernels.call("attention", q, k, v, pattern=FULL)
        return self.o_proj(out.transpose(1, 2).reshape(B, L, -1))


class DecoderBlock(nn.Module):
    def __init__(self, cfg, hidden: int):
        super().__init__()
        kv = cfg.n_kv_heads or cfg.n_heads
        self.input_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.self_attn = SelfAttention(cfg.d_model, cfg.n_heads, kv)
        self.cross_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.cross_attn = CrossAttention(cfg.d_model, cfg.n_heads, kv)
        self.post_attention_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = MLP(cfg.d_model, hidden)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x, memory, **kw):
        x = x + self.dropout(self.self_attn(self.input_layernorm(x), **kw))
        x = x + self.dropout(self.cross_attn(self.cross_layernorm(x), *memory, rope=kw["rope"]))
        return x + self.dropout(self.mlp(self.post_attention_layernorm(x)))


class EncoderDecoder(Backbone):
    """Encoder over the source block, decoder with cross-attention over the rest (module docstring)."""

    patterns = frozenset({"prefix", "causal"})

    def __init__(self, cfg, source_length: int, cache_policy=None):
        super().__init__()
        self.cfg = cfg
        self.source_length = int(source_length)
        self.cache_policy = cache_policy
        hidden = cfg.ffn_hidden or 32 * -(-int(8 * cfg.d_model / 3) // 32)
        self.encoder = nn.ModuleList(Block(cfg, hidden) for _ in range(cfg.encoder_layers))
        self.encoder_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.decoder = nn.ModuleList(DecoderBlock(cfg, hidden) for _ in range(cfg.decoder_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.rotary = Rotary(cfg.d_model // cfg.n_heads, cfg.rope_theta) if cfg.rope else None
        self.apply(self._init)
        std = 0.02 / (2 * (cfg.encoder_layers + cfg.decoder_layers)) ** 0.5  # scaled init of the residual projections (GPT-2)
        for block in self.encoder:
            nn.init.normal_(block.self_attn.o_proj.weight, std=std)
            nn.init.normal_(block.mlp.down_proj.weight, std=std)
        for block in self.decoder:
            for proj in (block.self_attn.o_proj, block.cross_attn.o_proj, block.mlp.down_proj):
                nn.init.normal_(proj.weight, std=std)

    @staticmethod
    def _init(m):
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)

    def supports(self, pattern: AttentionPattern) -> bool:
        return pattern.kind == "causal" or (pattern.kind == "prefix" and pattern.prefix_length == self.source_length)

    def _rope(self, positions: torch.Tensor, dtype):
        return self.rotary(positions, dtype) if self.rotary is not None else None

    def _source_rope(self, batch: int, device, dtype):
        S = self.source_length
        return self._rope(torch.arange(S, device=device).expand(batch, S), dtype)

    def encode(self, source: torch.Tensor) -> torch.Tensor:
        """The encoder over source blocks (B, S, D): bidirectional, positions 0 .. S-1; returns (B, S, D)."""
        rope = self._source_rope(source.shape[0], source.device, source.dtype)
        h = source
        for block in self.encoder:
            h = block(h, pattern=FULL, rope=rope, positions=None, valid=None, cache=None, layer=0)
        return self.encoder_norm(h)

    def memory(self, encoded: torch.Tensor) -> list[torch.Tensor]:
        """Every decoder layer's cross-attention keys and values of ``encoded``: [k0, v0, k1, v1, ...]
        (keys rotated to the source positions 0 .. S-1)."""
        rope = self._source_rope(encoded.shape[0], encoded.device, encoded.dtype)
        return [t for block in self.decoder for t in block.cross_attn.memory(encoded, rope)]

    def forward(self, h, *, pattern: AttentionPattern | None = None, state: EncoderMemoryState | None = None, valid=None):
        B, L, D = h.shape
        S = self.source_length
        pattern = pattern if pattern is not None else AttentionPattern("prefix", prefix_length=S)
        if pattern.kind in _REFUSED or (pattern.kind == "prefix" and pattern.prefix_length != S):
            raise ValueError(f"the encoder-decoder backbone reads a source block of {S} positions under prefix({S}) "
                             f"(the decoder is causal); got the pattern {pattern}")
        valid = torch.ones(B, L, dtype=torch.bool, device=h.device) if valid is None else valid.to(h.device, torch.bool)
        before = state.lengths if state is not None else torch.zeros(B, dtype=torch.long, device=h.device)
        pos = before[:, None] + valid.long().cumsum(1) - 1  # absolute positions of the valid tokens
        ready = state.ready if state is not None else torch.zeros(B, dtype=torch.bool, device=h.device)
        source = valid & (pos < S)
        if bool((source & ready[:, None] & (pos < S - 1)).any()):
            raise ValueError("a row whose source is already encoded was fed source positions again (roll back to at least S - 1)")
        to_encode = source & ~ready[:, None]
        counts = to_encode.long().sum(1)
        partial = (counts > 0) & (counts != S)
        if bool(partial.any()):
            raise ValueError(f"the encoder reads the source block whole: the first advance of a row must hold all {S} source positions "
                             f"(rows {partial.nonzero().flatten().tolist()} hold {counts[partial].tolist()}); pass source= to generate")
        out = torch.zeros_like(h)
        memory = state.memory if state is not None else None
        rows = (counts > 0).nonzero().flatten()
        if rows.numel():
            order = torch.sort((~to_encode[rows]).int(), dim=1, stable=True).indices[:, :S]  # each row's source columns, in order
            index = order[..., None].expand(-1, -1, D)
            encoded = self.encode(h[rows].gather(1, index))
            values = self.memory(encoded)
            if state is not None:
                state.set_memory(rows, values)
                memory = state.memory
            else:
                memory = [torch.zeros(B, *v.shape[1:], dtype=v.dtype, device=v.device).index_copy(0, rows, v) for v in values]
            out = out.index_copy(0, rows, out[rows].scatter(1, index, encoded))
        target = valid & (pos >= S - 1)
        columns = target.any(0).nonzero().flatten()
        if state is not None:
            state.decoder_start = int(columns[0]) if columns.numel() else 0
        if not columns.numel():
            return out
        c0 = int(columns[0])
        x, dvalid, dpos = h[:, c0:], target[:, c0:], pos[:, c0:].clamp_min(0)
        cache = None
        if state is not None:
            cache = state.decoder
            cache.begin(dvalid)
        rope = self._rope(pattern.positions(dpos), h.dtype)
        for i, block in enumerate(self.decoder):
            x = block(x, (memory[2 * i], memory[2 * i + 1]), pattern=pattern, rope=rope, positions=dpos, valid=dvalid, cache=cache, layer=i, offset=S - 1)
        x = self.norm(x)
        return torch.cat([out[:, :c0], torch.where(dvalid[..., None], x, out[:, c0:])], 1)

    def init_state(self, batch_size: int, capacity: int = 256, device=None, dtype=None):
        cfg = self.cfg
        dtype = dtype or torch.float32
        kv, dh = cfg.n_kv_heads or cfg.n_heads, cfg.d_model // cfg.n_heads
        shape = (cfg.decoder_layers, batch_size, kv, dh, max(capacity - self.source_length + 1, 1))
        policy = self.cache_policy
        if policy is None or type(policy) is FullPolicy:
            cache = KVCache(*shape, device=device, dtype=dtype)
        else:
            cache = ManagedKVCache(*shape, device=device, dtype=dtype, policy=policy)
        memory = [torch.zeros(batch_size, kv, self.source_length, dh, device=device, dtype=dtype) for _ in range(2 * cfg.decoder_layers)]
        return EncoderMemoryState(cache, memory, self.source_length - 1)


def build(config, ctx):
    source_length = ctx.get("source_length")
    if not source_length:
        raise ConfigError("the encoder-decoder backbone needs source-conditioned data: a data set that publishes source_length "
                          "(e.g. data.name: seq2seq)", path="backbone")
    return EncoderDecoder(config, int(source_length), ctx.get("cache_policy"))
