"""The GateLoop backbone: data-controlled complex linear recurrence blocks, and their state.

Block, for input x (B, L, d_model), H heads of width d::

    q, k, v       = x W_q, x W_k / sqrt(d), x W_v                          per head, real
    log|a|, phase = log sigmoid(x W_a + b_a), x W_theta                     per head and key channel
    h_n           = exp(log|a_n| + i phase_n) * h_{n-1} + k_n^T v_n,  o_n = Re(q_n h_n)
    y             = W_o (silu(x W_g) * GroupNorm_heads(o))
    out           = x + y, then + FFN(LN(.))                                 pre-norm residuals

The recurrence goes through the ``linear_recurrence`` op (or the plugin's associative scan).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from genloom.core import kernels
from genloom.plugins.gateloop.scan import associative_scan_gateloop
from genloom.toolkit.recurrent import PreNormResidualBlock, RecurrentBackbone, RecurrentState, complex_dtype_for, replay_linear_recurrence


class GateLoopMixer(nn.Module):
    """Data-controlled complex gated linear recurrence (one block's token mixer)."""

    def __init__(self, cfg, layer_index: int):
        super().__init__()
        self.layer_index = layer_index
        self.mode = cfg.mode
        self.n_heads = cfg.n_heads
        self.head_dim = cfg.d_model // cfg.n_heads
        D = cfg.d_model
        self.qkv = nn.Linear(D, 3 * D, bias=False)
        self.transition = nn.Linear(D, 2 * D)  # magnitude logits and phases, per head and key channel
        self.gate = nn.Linear(D, D, bias=False)
        self.out_proj = nn.Linear(D, D, bias=False)
        self.group_norm = nn.GroupNorm(cfg.n_heads, D, eps=cfg.norm_eps)
        with torch.no_grad():  # |a| starts in ~[0.9, 0.999]: slow forgetting at initialisation
            magnitude = torch.linspace(0.9, 0.999, D)
            self.transition.bias[:D].copy_(torch.log(magnitude / (1 - magnitude)))
            self.transition.bias[D:].zero_()
            self.transition.weight[D:].mul_(0.1)

    def recurrence_inputs(self, x, steps=None):
        """q, k, v (B, H, L, d) and the complex log transition g (B, H, L, d); padded steps
        (``steps`` False) become identity steps (g = 0, k = 0)."""
        B, L, D = x.shape
        split = lambda t: t.view(B, L, self.n_heads, self.head_dim).transpose(1, 2)  # noqa: E731
        q, k, v = (split(t) for t in self.qkv(x).chunk(3, -1))
        k = k / math.sqrt(self.head_dim)
        magnitude_logit, phase = (split(t) for t in self.transition(x).chunk(2, -1))
        g = torch.complex(F.logsigmoid(magnitude_logit), phase)
        if steps is not None:
            keep = steps[:, None, :, None]
            g = torch.where(keep, g, torch.zeros_like(g))
            k = torch.where(keep, k, torch.zeros_like(k))
        return q, k, v, g

    def forward(self, x, state: RecurrentState | None = None, steps=None):
        B, L, D = x.shape
        q, k, v, g = self.recurrence_inputs(x, steps)
        before = state.layers[self.layer_index]["h"] if state is not None else None
        if self.mode == "associative-scan" and state is None:
            o, final = associative_scan_gateloop(q, k, v, g, before)
        else:
            o, final = kernels.call("linear_recurrence", q, k, v, g, initial_state=before)
        if state is not None:
            state.commit(self.layer_index, {"h": final}, {"k": k, "v": v, "g": g})
        o = o.real.to(x.dtype).transpose(1, 2).reshape(B * L, D)
        o = self.group_norm(o).view(B, L, D)
        return self.out_proj(F.silu(self.gate(x)) * o)

    def replay(self, before: dict, record: dict, keep: torch.Tensor) -> dict:
        return {"h": replay_linear_recurrence(before["h"], record, keep)}


class GateLoop(RecurrentBackbone):
    """A stack of pre-norm GateLoop blocks; causal pattern only."""

    name = "gateloop"
    causal_reason = "a recurrence cannot look ahead"

    def __init__(self, cfg):
        super().__init__(cfg, (PreNormResidualBlock(cfg.d_model, cfg.ffn_mult, cfg.norm_eps, GateLoopMixer(cfg, i)) for i in range(cfg.n_layers)))

    def layer_state(self, batch_size, device, dtype):
        d = self.cfg.d_model // self.cfg.n_heads
        return {"h": torch.zeros(batch_size, self.cfg.n_heads, d, d, device=device, dtype=complex_dtype_for(dtype))}


def build(config, ctx) -> GateLoop:
    return GateLoop(config)
