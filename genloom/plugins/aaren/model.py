"""The Aaren backbone: multi-head attention with a learned query per head, computed as a prefix scan.

Layer, for x (B, L, D) and H heads of width d::

    k, v   = x W_k, x W_v                       per head
    s_t    = q_h . k_t / sqrt(d)                 q_h a learned vector (no dependence on the input)
    o_t    = sum_{i <= t} softmax(s_1..s_t)_i v_i    (the ``softmax_prefix_scan`` op)
    out    = W_o o;   blocks: h + Aaren(LN(h)), then + FFN(LN(.))
"""

from __future__ import annotations

import math

import torch
from torch import nn

from genloom.core import kernels
from genloom.toolkit.recurrent import PreNormResidualBlock, RecurrentBackbone, RecurrentState


def _scan(scores, values, initial=None):
    return kernels.call("softmax_prefix_scan", scores, values, initial=initial)


class AarenLayer(nn.Module):
    def __init__(self, cfg, layer_index: int):
        super().__init__()
        self.layer_index = layer_index
        self.n_heads, self.head_dim = cfg.n_heads, cfg.d_model // cfg.n_heads
        self.query = nn.Parameter(torch.randn(cfg.n_heads, self.head_dim))
        self.to_kv = nn.Linear(cfg.d_model, 2 * cfg.d_model, bias=False)
        self.out_proj = nn.Linear(cfg.d_model, cfg.d_model)

    def scores_and_values(self, x, steps=None):
        B, L, D = x.shape
        k, v = (t.view(B, L, self.n_heads, self.head_dim).transpose(1, 2) for t in self.to_kv(x).chunk(2, -1))
        scores = torch.einsum("hd,bhld->bhl", self.query.to(x.dtype), k) / math.sqrt(self.head_dim)
        if steps is not None:
            scores = scores.masked_fill(~steps[:, None, :], float("-inf"))  # the scan's identity
        return scores, v

    def forward(self, x, state: RecurrentState | None = None, steps=None):
        B, L, D = x.shape
        scores, v = self.scores_and_values(x, steps)
        initial = None
        if state is not None:
            layer = state.layers[self.layer_index]
            initial = (layer["m"], layer["u"], layer["w"])
        o, final = _scan(scores, v, initial)
        if state is not None:
            state.commit(self.layer_index, {"m": final[0], "u": final[1], "w": final[2]}, {"scores": scores, "v": v})
        return self.out_proj(o.transpose(1, 2).reshape(B, L, D))

    def replay(self, before, record, keep):
        scores = record["scores"].masked_fill(~keep[:, None, :], float("-inf"))
        _, final = _scan(scores, record["v"], (before["m"], before["u"], before["w"]))
        return {"m": final[0], "u": final[1], "w": final[2]}


class Aaren(RecurrentBackbone):
    """A stack of pre-norm Aaren blocks; causal pattern only (each output attends to its prefix)."""

    name = "aaren"
    causal_reason = "outputs attend to their prefix"

    def __init__(self, cfg):
        super().__init__(cfg, (PreNormResidualBlock(cfg.d_model, cfg.ffn_mult, cfg.norm_eps, AarenLayer(cfg, i), mixer_name="aaren") for i in range(cfg.n_layers)))

    def layer_state(self, batch_size, device, dtype):
        """The (max, denominator, numerator) triple per head."""
        H, d = self.cfg.n_heads, self.cfg.d_model // self.cfg.n_heads
        return {"m": torch.full((batch_size, H), float("-inf"), device=device, dtype=dtype), "u": torch.zeros(batch_size, H, device=device, dtype=dtype), "w": torch.zeros(batch_size, H, d, device=device, dtype=dtype)}


def build(config, ctx) -> Aaren:
    return Aaren(config)
