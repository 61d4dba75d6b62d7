"""Long filters of the Hyena operator: implicit (an MLP of position) and modal (a diagonal SSM).

Both give ``kernel(length) -> (heads, length)``; the modal one also gives the recurrence inputs of
its SSM, whose impulse response is exactly that kernel::

    h~[t] = Re(sum_n R_n lambda_n^t),     s_n(t) = lambda_n s_n(t-1) + u(t),  y(t) = Re(sum_n R_n s_n(t))
"""

from __future__ import annotations

import math

import torch
from torch import nn


class ImplicitFilter(nn.Module):
    """Hyena's implicit filter: ``h[head, t] = MLP(features(t))[head] * exp(-alpha[head] t)``.

    Features are t / max_length and sin/cos of 2 pi k t / max_length; the decay rates alpha are
    spread log-uniformly over heads (fast to slow), as in Hyena's exponential window."""

    def __init__(self, heads: int, hidden: int, features: int, max_length: int):
        super().__init__()
        self.max_length = max_length
        self.register_buffer("frequencies", torch.arange(1, features + 1, dtype=torch.float32), persistent=False)
        self.mlp = nn.Sequential(nn.Linear(2 * features + 1, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, heads))
        rates = torch.exp(torch.linspace(math.log(0.3), math.log(3.0 / max_length), heads))
        self.register_buffer("decay", rates, persistent=False)

    def kernel(self, length: int, dtype=None) -> torch.Tensor:
        dtype = dtype or self.mlp[0].weight.dtype
        t = torch.arange(length, device=self.mlp[0].weight.device, dtype=dtype)
        phase = 2 * math.pi * t[:, None] * self.frequencies.to(dtype) / self.max_length
        features = torch.cat([t[:, None] / self.max_length, torch.sin(phase), torch.cos(phase)], -1)
        return (self.mlp(features.to(self.mlp[0].weight.dtype)).to(dtype) * torch.exp(-self.decay.to(dtype)[None, :] * t[:, None])).T


class ModalFilter(nn.Module):
    """A diagonal SSM of order d per head: poles ``exp(-exp(log_decay) + i angle)``, complex residues."""

    def __init__(self, heads: int, order: int):
        super().__init__()
        self.heads, self.order = heads, order
        self.log_decay = nn.Parameter(torch.log(torch.linspace(0.05, 1.0, order)).repeat(heads, 1))
        self.angle = nn.Parameter(torch.linspace(0, math.pi, order).repeat(heads, 1))
        self.residue_re = nn.Parameter(torch.randn(heads, order) / order)
        self.residue_im = nn.Parameter(torch.zeros(heads, order))

    def log_poles_and_residues(self, dtype):
        complex_dtype = torch.complex128 if dtype == torch.float64 else torch.complex64
        log_poles = torch.complex(-torch.exp(self.log_decay), self.angle).to(complex_dtype)
        return log_poles, torch.complex(self.residue_re, self.residue_im).to(complex_dtype)

    def kernel(self, length: int, dtype=None) -> torch.Tensor:
        dtype = dtype or self.log_decay.dtype
        log_poles, residues = self.log_poles_and_residues(dtype)
        t = torch.arange(length, device=log_poles.device, dtype=log_poles.real.dtype)
        return torch.einsum("hn,hnt->ht", residues, torch.exp(log_poles[..., None] * t)).real.to(dtype)
