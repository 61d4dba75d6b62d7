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

import math

import torch
import torch.nn.functional as F
from torch import nn

from genloom.core import kernels
from genloom.core.model import Backbone
from genloom.core.pattern import CAUSAL, AttentionPattern
from genloom.toolkit.recurrent import RecurrentState


class DSS(nn.Module):
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


class GSSLayer(nn.Module):
    def __init__(self, cfg, layer_index: int):
        super().__init__()
        self.layer_index = layer_index
        width = cfg.expand * cfg.d_model
        self.norm = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.to_v = nn.Linear(cfg.d_model, width)
        self.to_u = nn.Linear(cfg.d_model, cfg.ssm_width)
        self.dss = DSS(cfg.ssm_width, cfg.state_size, cfg.dt_min, cfg.dt_max)
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
        mask = keep[:, None, :, None]
        g = torch.where(mask, record["g"], torch.zeros_like(record["g"]))
        k = torch.where(mask, record["k"], torch.zeros_like(record["k"]))
        _, final = kernels.call("linear_recurrence", k, k, record["v"], g, initial_state=before["s"])
        return {"s": final}


class GSS(Backbone):
    """A stack of GSS layers and a final LayerNorm; causal pattern only."""

    patterns = frozenset({"causal"})

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.layers = nn.ModuleList(GSSLayer(cfg, i) for i in range(cfg.n_layers))
        self.norm = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)

    def forward(self, h: torch.Tensor, *, pattern: AttentionPattern = CAUSAL, state: RecurrentState | None = None, valid: torch.Tensor | None = None) -> torch.Tensor:
        if not self.supports(pattern):
            raise ValueError(f"the gss backbone serves only the causal pattern (a causal convolution cannot look ahead), got '{pattern.kind}'")
        steps = None
        if valid is not None and not bool(valid.all()):
            steps = valid.to(device=h.device, dtype=torch.bool)  # padded steps: identity steps of the recurrence
        if state is not None:
            steps = state.begin(valid, h.shape[1])
        for layer in self.layers:
            h = layer(h, state=state, steps=steps)
        return self.norm(h)

    def init_state(self, batch_size: int, capacity: int = 256, device=None, dtype=None) -> RecurrentState:
        """A fresh state: per layer the (B, H, N, 1) complex modal state; ``capacity`` is ignored."""
        param = next(self.parameters())
        device = device if device is not None else param.device
        dtype = dtype if dtype is not None else param.dtype
        complex_dtype = torch.complex128 if dtype == torch.float64 else torch.complex64
        shape = (batch_size, self.cfg.ssm_width, self.cfg.state_size, 1)
        layers = [{"s": torch.zeros(shape, device=device, dtype=complex_dtype)} for _ in self.layers]
        return RecurrentState(layers, self._replay, batch_size, device=device)

    def _replay(self, index, before, record, keep):
        return self.layers[index].replay(before, record, keep)


def build(config, ctx) -> GSS:
    return GSS(config)
