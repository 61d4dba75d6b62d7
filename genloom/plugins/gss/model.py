"""The GSS backbone: gated DSS long-convolution layers, convolutional training, recurrent decoding.

Layer (Mehta et al. 2022, Fig. 1), for x (B, L, E)::

    z        = LayerNorm(x)
    v, u     = gelu(z W_v) (F wide), gelu(z W_u) (H wide)
    y        = DSS(u)                       fft_conv(u, K) + D u with K[h, l] = Re(sum_n w~[h,n] exp(dt[h] lambda[n] l))
    out      = x + ((y W_c) * v) W_o

``w~ = w (exp(dt lambda) - 1) / lambda`` (zero-order hold). The same DSS is the modal recurrence
s[h, n](t) = exp(dt[h] lambda[n]) s[h, n](t-1) + u[h](t), y[h](t) = Re(sum_n w~[h, n] s[h, n](t)) + D[h] u[h](t).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from genloom.toolkit.recurrent import RecurrentBackbone, RecurrentState, complex_dtype_for
from genloom.toolkit.ssm import DiagonalSSM


class GSSLayer(nn.Module):
    def __init__(self, cfg, layer_index: int):
        super().__init__()
        self.layer_index = layer_index
        width = cfg.expand * cfg.d_model
        self.norm = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.to_v = nn.Linear(cfg.d_model, width)
        self.to_u = nn.Linear(cfg.d_model, cfg.ssm_width)
        self.dss = DiagonalSSM(cfg.ssm_width, cfg.state_size, cfg.dt_min, cfg.dt_max)
        self.to_gate = nn.Linear(cfg.ssm_width, width)
        self.out = nn.Linear(width, cfg.d_model)

    def forward(self, x, state: RecurrentState | None = None, steps=None):
        z = self.norm(x)
        v, u = F.gelu(self.to_v(z)), F.gelu(self.to_u(z))
        if state is None and steps is None:
            y = self.dss.convolve(u)
        else:
            before = state.layers[self.layer_index]["s"] if state is not None else None
            y, final, record = self.dss.recur(u, before, steps)
            if state is not None:
                state.commit(self.layer_index, {"s": final}, record)
        return x + self.out(self.to_gate(y) * v)

    def replay(self, before: dict, record: dict, keep: torch.Tensor) -> dict:
        return {"s": self.dss.replay(before["s"], record, keep)}


class GSS(RecurrentBackbone):
    """A stack of GSS layers and a final LayerNorm; causal pattern only."""

    name = "gss"
    causal_reason = "a causal convolution cannot look ahead"

    def __init__(self, cfg):
        super().__init__(cfg, (GSSLayer(cfg, i) for i in range(cfg.n_layers)))

    def layer_state(self, batch_size, device, dtype):
        """The (B, H, N, 1) complex modal state."""
        return {"s": torch.zeros((batch_size, self.cfg.ssm_width, self.cfg.state_size, 1), device=device, dtype=complex_dtype_for(dtype))}


def build(config, ctx) -> GSS:
    return GSS(config)
