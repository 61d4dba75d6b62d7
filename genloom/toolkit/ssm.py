"""Diagonal state space layers shared by the convolutional/recurrent SSM backbones (gss, smr).

:class:`DiagonalSSM` is a DSS/S4D-style layer over H channels with N complex modes per channel.
Its impulse response is the long-convolution kernel ``K[h, l] = Re(sum_n w~[h, n] exp(dt[h] lambda[n] l))``
(``w~`` the zero-order-hold residues), applied through the ``fft_conv`` kernel op for full
sequences; the same system is the modal recurrence ``s(t) = exp(dt lambda) s(t-1) + u(t)``,
``y(t) = Re(sum_n w~ s(t)) + D u(t)``, run through the ``linear_recurrence`` op (heads = channels,
keys = modes, value width 1) for decoding, padding and rollback. Initialisation is S4D-Lin
(``Re lambda = -1/2``, ``Im lambda = pi n``), ``log dt`` uniform in [log dt_min, log dt_max].
"""

from __future__ import annotations

import math

import torch
from torch import nn

from genloom.core import kernels
from genloom.toolkit.recurrent import replay_linear_recurrence


class DiagonalSSM(nn.Module):
    """Diagonal state space layer over H channels with N complex modes (DSS-exp, ZOH residues)."""

    def __init__(self, channels: int, modes: int, dt_min: float, dt_max: float):
        super().__init__()
        self.channels, self.modes = channels, modes
        self.log_neg_real = nn.Parameter(torch.full((modes,), math.log(0.5)))  # Re(lambda) = -0.5 (S4D-Lin)
        self.imag = nn.Parameter(math.pi * torch.arange(modes, dtype=torch.float32))  # Im(lambda) = pi n
        self.log_dt = nn.Parameter(torch.rand(channels) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        self.residue_re = nn.Parameter(torch.randn(channels, modes) * modes ** -0.5)
        self.residue_im = nn.Parameter(torch.randn(channels, modes) * modes ** -0.5)
        self.skip = nn.Parameter(torch.ones(channels))

    def modes_and_residues(self, dtype: torch.dtype):
        """(log decays dt * lambda (H, N), ZOH residues w~ (H, N)), complex."""
        complex_dtype = torch.complex128 if dtype == torch.float64 else torch.complex64
        lam = torch.complex(-torch.exp(self.log_neg_real), self.imag).to(complex_dtype)
        dt_lam = torch.exp(self.log_dt).to(complex_dtype)[:, None] * lam[None, :]
        residue = torch.complex(self.residue_re, self.residue_im).to(complex_dtype)
        return dt_lam, residue * torch.expm1(dt_lam) / lam[None, :]

    def kernel(self, length: int, dtype: torch.dtype) -> torch.Tensor:
        """K (H, L): K[h, l] = Re(sum_n w~[h, n] exp(dt[h] lambda[n] l)), the impulse response."""
        dt_lam, residue = self.modes_and_residues(dtype)
        lags = torch.arange(length, device=dt_lam.device, dtype=dt_lam.real.dtype)
        return torch.einsum("hn,hnl->hl", residue, torch.exp(dt_lam[..., None] * lags)).real.to(dtype)

    def convolve(self, u: torch.Tensor) -> torch.Tensor:
        """Full-sequence DSS by the ``fft_conv`` op (u (B, L, H))."""
        return kernels.call("fft_conv", u, self.kernel(u.shape[1], u.dtype), skip=self.skip.to(u.dtype))

    def recurrence_inputs(self, u: torch.Tensor, steps: torch.Tensor | None):
        """The modal recurrence as ``linear_recurrence`` inputs: heads = channels, keys = modes, value width 1."""
        B, L, H = u.shape
        dt_lam, residue = self.modes_and_residues(u.dtype)
        q = residue[None, :, None, :].expand(B, H, L, self.modes)
        k = torch.ones_like(q)
        g = dt_lam[None, :, None, :].expand(B, H, L, self.modes)
        v = u.transpose(1, 2)[..., None].to(q.dtype)
        if steps is not None:
            keep = steps[:, None, :, None]
            g, k = torch.where(keep, g, torch.zeros_like(g)), torch.where(keep, k, torch.zeros_like(k))
        return q, k, v, g

    def recur(self, u: torch.Tensor, state: torch.Tensor | None, steps: torch.Tensor | None):
        """DSS by the modal recurrence: ``(y (B, L, H), final modal state (B, H, N, 1), record)``."""
        q, k, v, g = self.recurrence_inputs(u, steps)
        y, final = kernels.call("linear_recurrence", q, k, v, g, initial_state=state)
        y = y[..., 0].real.transpose(1, 2).to(u.dtype) + u * self.skip.to(u.dtype)
        return y, final, {"k": k, "v": v, "g": g}


    def replay(self, before: torch.Tensor, record: dict, keep: torch.Tensor) -> torch.Tensor:
        """The modal state after feeding, from ``before``, only the steps of ``record`` where ``keep``."""
        return replay_linear_recurrence(before, record, keep)

    def init_state(self, batch_size: int, device=None, dtype=torch.float32) -> torch.Tensor:
        complex_dtype = torch.complex128 if dtype == torch.float64 else torch.complex64
        return torch.zeros(batch_size, self.channels, self.modes, 1, device=device, dtype=complex_dtype)
