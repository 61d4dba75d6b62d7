"""SpaceTime's layers: companion SSMs as long convolutions, and the closed-loop companion SSM.

``CompanionSSM(u)``: ``y = K * u + D u`` with ``K_k = c A^k b`` from ``toolkit.ssm.companion_kernel``.
``ClosedLoopSSM(z, horizon)``: the recurrence over z, then ``horizon`` steps in which the layer's
own prediction ``u_hat = k . x`` of its next input is fed back: ``x <- A x + b u_hat``,
``y = c x + D u_hat``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from genloom.core.model import Backbone
from genloom.core.pattern import FULL, AttentionPattern
from genloom.plugins.spacetime import SpaceTimeConfig
from genloom.toolkit import ssm


class CompanionSSM(nn.Module):
    """H channels, each a discrete SSM with companion matrix ``A = S + a e_p^T``, input b, output c, skip D."""

    def __init__(self, channels: int, order: int, init_scale: float = 0.1):
        super().__init__()
        self.a = nn.Parameter(torch.randn(channels, order) * init_scale / order)
        self.b = nn.Parameter(torch.randn(channels, order) * init_scale)
        self.c = nn.Parameter(torch.randn(channels, order) * init_scale)
        self.skip = nn.Parameter(torch.ones(channels))

    def matrices(self, dtype: torch.dtype):
        """(A (H, p, p), b, c (H, p), D (H,)) in ``dtype``."""
        return ssm.companion(self.a.to(dtype)), self.b.to(dtype), self.c.to(dtype), self.skip.to(dtype)

    def kernel(self, length: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return ssm.companion_kernel(self.a.to(dtype), self.b.to(dtype), self.c.to(dtype), length)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """u (B, L, H) -> (B, L, H) as a long convolution (``fft_conv``)."""
        return ssm.dense_convolve(u, self.kernel(u.shape[1], u.dtype), self.skip)

    def recurrent(self, u: torch.Tensor, state: torch.Tensor | None = None):
        a, b, c, d = self.matrices(u.dtype)
        return ssm.dense_recurrence(a, b, c, d, u, state)


class ClosedLoopSSM(CompanionSSM):
    """A companion SSM that, after its input ends, predicts and feeds back its own next input."""

    def __init__(self, channels: int, order: int, init_scale: float = 0.1):
        super().__init__(channels, order, init_scale)
        self.feedback = nn.Parameter(torch.randn(channels, order) * init_scale)

    def forward(self, z: torch.Tensor, horizon: int):
        """``(outputs over lookback + horizon (B, L + horizon, H), fed-back inputs (B, horizon, H))``."""
        a, b, c, d = self.matrices(z.dtype)
        y, x = ssm.dense_recurrence(a, b, c, d, z)
        k = self.feedback.to(z.dtype)
        outputs, inputs = [y], []
        for _ in range(horizon):
            u_hat = torch.einsum("hp,bhp->bh", k, x)  # the layer's prediction of its next input
            x = torch.einsum("hnm,bhm->bhn", a, x) + b * u_hat[..., None]
            outputs.append((torch.einsum("hp,bhp->bh", c, x) + d * u_hat)[:, None])
            inputs.append(u_hat)
        return torch.cat(outputs, 1), torch.stack(inputs, 1) if inputs else z.new_zeros(z.shape[0], 0, z.shape[2])


class SpaceTimeBlock(nn.Module):
    def __init__(self, config: SpaceTimeConfig):
        super().__init__()
        self.norm = nn.LayerNorm(config.d_model)
        self.ssm = CompanionSSM(config.d_model, config.order, config.init_scale)
        self.mix = nn.Linear(config.d_model, config.d_model)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, h):
        return h + self.mix(self.dropout(F.gelu(self.ssm(self.norm(h)))))


class SpaceTime(Backbone):
    """Embedded lookback (B, L, d) -> (B, L + horizon, d); the last ``horizon`` come from the closed loop."""

    patterns = frozenset({"full", "causal"})

    def __init__(self, config: SpaceTimeConfig):
        super().__init__()
        self.d_model, self.horizon = config.d_model, config.horizon
        self.blocks = nn.ModuleList(SpaceTimeBlock(config) for _ in range(config.n_layers))
        self.decoder_norm = nn.LayerNorm(config.d_model)
        self.decoder = ClosedLoopSSM(config.d_model, config.order, config.init_scale)
        self.norm = nn.LayerNorm(config.d_model)

    def forward(self, h: torch.Tensor, *, pattern: AttentionPattern = FULL, state=None, valid=None) -> torch.Tensor:
        if state is not None:
            raise ValueError("spacetime forecasts the whole horizon in one closed-loop pass; it has no incremental state")
        if pattern.kind not in self.patterns:
            raise ValueError(f"spacetime is causal over the lookback ('full' or 'causal' pattern), got '{pattern.kind}'")
        for block in self.blocks:
            h = block(h)
        y, _ = self.decoder(self.decoder_norm(h), self.horizon)
        return self.norm(y)

    def init_state(self, batch_size: int, capacity: int = 256, device=None, dtype=None):
        raise NotImplementedError("spacetime forecasts the whole horizon in one closed-loop pass; it has no incremental state")


def build(config: SpaceTimeConfig, ctx) -> SpaceTime:
    if config.horizon is None:
        config.bind(ctx)
    ctx.set("d_model", config.d_model)
    return SpaceTime(config)
