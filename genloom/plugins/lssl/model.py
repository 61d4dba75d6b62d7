"""LSSL layers: a HiPPO state space model per channel, convolutional view through ``fft_conv``.

``LSSLLayer(u)``: ``K[h, k] = C_h Abar_h^k Bbar_h`` (bilinear discretisation with the channel's dt),
``y = K * u + D u``. ``LSSLLayer.recurrent(u)`` is the step-by-step recurrence of the same system.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from genloom.core.model import Backbone
from genloom.core.pattern import FULL, AttentionPattern
from genloom.plugins.lssl import LSSLConfig
from genloom.toolkit import ssm


class LSSLLayer(nn.Module):
    """H channels, each an order-N linear state space model with HiPPO A, B (shared) and its own C, D, dt."""

    def __init__(self, channels: int, state_size: int, measure: str = "legs", dt_min: float = 1e-3,
                 dt_max: float = 1e-1, train_a: bool = True):
        super().__init__()
        a, b = ssm.hippo(measure, state_size, torch.float32)
        self.a = nn.Parameter(a, requires_grad=train_a)
        self.b = nn.Parameter(b, requires_grad=train_a)
        self.c = nn.Parameter(torch.randn(channels, state_size) * state_size ** -0.5)
        self.skip = nn.Parameter(torch.ones(channels))
        self.log_dt = nn.Parameter(torch.rand(channels) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))

    def discrete(self, dtype: torch.dtype):
        """(Abar (H, N, N), Bbar (H, N)) by the bilinear transform with each channel's dt."""
        return ssm.bilinear(self.a.to(dtype), self.b.to(dtype), torch.exp(self.log_dt).to(dtype))

    def kernel(self, length: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        a_bar, b_bar = self.discrete(dtype)
        return ssm.dense_kernel(a_bar, b_bar, self.c.to(dtype), length)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """Convolutional view, u (B, L, H) -> (B, L, H)."""
        return ssm.dense_convolve(u, self.kernel(u.shape[1], u.dtype), self.skip)

    def recurrent(self, u: torch.Tensor, state: torch.Tensor | None = None):
        """Recurrent view: ``(y (B, L, H), final state (B, H, N))``."""
        a_bar, b_bar = self.discrete(u.dtype)
        return ssm.dense_recurrence(a_bar, b_bar, self.c.to(u.dtype), self.skip.to(u.dtype), u, state)


class LSSLBlock(nn.Module):
    def __init__(self, config: LSSLConfig):
        super().__init__()
        self.norm = nn.LayerNorm(config.d_model)
        self.ssm = LSSLLayer(config.d_model, config.state_size, config.measure, config.dt_min, config.dt_max, config.train_a)
        self.mix = nn.Linear(config.d_model, config.d_model)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, h):
        return h + self.mix(self.dropout(F.gelu(self.ssm(self.norm(h)))))


class LSSL(Backbone):
    """Embedded lookback (B, L, d) -> (B, L + horizon, d); the last ``horizon`` are the forecast steps."""

    patterns = frozenset({"full", "causal"})

    def __init__(self, config: LSSLConfig):
        super().__init__()
        self.d_model, self.horizon = config.d_model, config.horizon
        self.blocks = nn.ModuleList(LSSLBlock(config) for _ in range(config.n_layers))
        self.norm = nn.LayerNorm(config.d_model)

    def forward(self, h: torch.Tensor, *, pattern: AttentionPattern = FULL, state=None, valid=None) -> torch.Tensor:
        if state is not None:
            raise ValueError("lssl forecasts the whole horizon in one pass; it has no incremental state")
        if pattern.kind not in self.patterns:
            raise ValueError(f"lssl is causal over the lookback ('full' or 'causal' pattern), got '{pattern.kind}'")
        h = torch.cat([h, h.new_zeros(h.shape[0], self.horizon, h.shape[2])], 1)
        for block in self.blocks:
            h = block(h)
        return self.norm(h)

    def init_state(self, batch_size: int, capacity: int = 256, device=None, dtype=None):
        raise NotImplementedError("lssl forecasts the whole horizon in one pass; it has no incremental state")


def build(config: LSSLConfig, ctx) -> LSSL:
    if config.horizon is None:
        config.bind(ctx)
    ctx.set("d_model", config.d_model)
    return LSSL(config)
