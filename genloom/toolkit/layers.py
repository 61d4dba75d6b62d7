"""Transformer layers that attention-variant backbones share.

:class:`PreNormBlock` is the pre-LayerNorm residual block ``x + attn(LN(x))`` then
``x + FFN(LN(x))`` (a GELU feed-forward of width ``ffn_mult * d_model``) around any attention
module whose ``forward(x, **kw)`` takes the keyword arguments the backbone passes through (positions,
validity, cache, layer index, pattern, ...). A paper that changes only the attention (Combiner,
URPE) supplies that module and keeps the rest of the block standard. Parameter names
(``attn_norm``, ``attn``, ``ffn_norm``, ``ffn``) are fixed, so checkpoints stay readable.
"""

from __future__ import annotations

from torch import nn


class PreNormBlock(nn.Module):
    def __init__(self, attn: nn.Module, d_model: int, ffn_mult: int = 4, norm_eps: float = 1e-5):
        super().__init__()
        self.attn_norm = nn.LayerNorm(d_model, eps=norm_eps)
        self.attn = attn
        self.ffn_norm = nn.LayerNorm(d_model, eps=norm_eps)
        self.ffn = nn.Sequential(nn.Linear(d_model, ffn_mult * d_model), nn.GELU(), nn.Linear(ffn_mult * d_model, d_model))

    def forward(self, x, **kw):
        x = x + self.attn(self.attn_norm(x), **kw)
        return x + self.ffn(self.ffn_norm(x))
