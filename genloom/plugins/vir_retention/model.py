"""The ViR backbone: multi-scale retention blocks on the ``linear_recurrence`` op, and its state.

Block (RetNet/ViR), for input x (B, L, d_model), H heads of key width d and value width v::

    q, k, v   = x W_Q, x W_K / sqrt(d), x W_V                     per head
    q~, k~    = complex pairs (q[2j] + i q[2j+1]), conj pairs of k       d/2 complex channels
    g         = log(gamma_h) + i theta_j                            constant complex log decay
    S_n       = exp(g) * S_{n-1} + k~_n^T v_n,   o_n = Re(q~_n S_n)     (the op)
    y         = W_O (swish(x W_G) * GroupNorm_heads(o))
    out       = x + y, then + FFN(LN(.))                            pre-norm residuals

Re(q~_n exp(G_n - G_m) k~_m) = gamma^(n-m) * <R(n theta) q_n, R(m theta) k_m>: the rotated, decayed
dot product of the paper's parallel form (:func:`parallel_retention` spells it out).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from genloom.core import kernels
from genloom.toolkit.recurrent import PreNormResidualBlock, RecurrentBackbone, RecurrentState, complex_dtype_for, replay_linear_recurrence


def head_decays(n_heads: int) -> torch.Tensor:
    """RetNet's multi-scale decays: gamma_h = 1 - exp(linspace(log 1/32, log 1/512, H))."""
    if n_heads == 1:
        return torch.tensor([1 - 1 / 32], dtype=torch.float64)
    return 1 - torch.exp(torch.linspace(math.log(1 / 32), math.log(1 / 512), n_heads, dtype=torch.float64))


def rotation_angles(pairs: int) -> torch.Tensor:
    """theta_j = 10000^(-j / pairs), the rotary/xPos angles of the pairs of key dimensions."""
    return 10000.0 ** (-torch.arange(pairs, dtype=torch.float64) / pairs)


def parallel_retention(q, k, v, gamma, theta):
    """The paper's parallel retention in real arithmetic: ``((Q_rot K_rot^T) * D) V``.

    q, k (B, H, L, d) (k already scaled), v (B, H, L, v); gamma (H,); theta (d/2,) (zeros: no
    rotation). Q and K are rotated by their absolute positions, D[n, m] = gamma^(n-m) for n >= m."""
    L = q.shape[2]
    n = torch.arange(L, dtype=q.dtype, device=q.device)
    angle = n[:, None] * theta.to(q.dtype)[None, :]  # (L, d/2)
    cos, sin = torch.cos(angle), torch.sin(angle)

    def rotate(x):
        even, odd = x[..., 0::2], x[..., 1::2]
        return torch.stack([even * cos - odd * sin, even * sin + odd * cos], -1).flatten(-2)

    scores = rotate(q) @ rotate(k).transpose(-1, -2)  # (B, H, L, L)
    distance = n[:, None] - n[None, :]
    D = torch.where(distance >= 0, gamma.to(q.dtype)[:, None, None] ** distance.clamp_min(0), torch.zeros((), dtype=q.dtype, device=q.device))
    return (scores * D) @ v


class MultiScaleRetention(nn.Module):
    """MSR: per-head retention through the op, GroupNorm over each head, swish gate, out projection."""

    def __init__(self, cfg, layer_index: int):
        super().__init__()
        self.layer_index = layer_index
        self.n_heads = cfg.n_heads
        self.key_dim = cfg.d_model // cfg.n_heads
        self.value_dim = self.key_dim * cfg.value_factor
        self.q_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.k_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.v_proj = nn.Linear(cfg.d_model, self.n_heads * self.value_dim, bias=False)
        self.g_proj = nn.Linear(cfg.d_model, self.n_heads * self.value_dim, bias=False)
        self.out_proj = nn.Linear(self.n_heads * self.value_dim, cfg.d_model, bias=False)
        self.group_norm = nn.GroupNorm(self.n_heads, self.n_heads * self.value_dim, eps=cfg.norm_eps)
        self.register_buffer("gamma", head_decays(cfg.n_heads).float(), persistent=False)
        theta = rotation_angles(self.key_dim // 2) if cfg.rotation else torch.zeros(self.key_dim // 2, dtype=torch.float64)
        self.register_buffer("theta", theta.float(), persistent=False)

    def projections(self, x):
        """Per-head q, k (scaled), v as (B, H, L, ·)."""
        B, L, _ = x.shape
        split = lambda t, w: t.view(B, L, self.n_heads, w).transpose(1, 2)  # noqa: E731
        q = split(self.q_proj(x), self.key_dim)
        k = split(self.k_proj(x), self.key_dim) / math.sqrt(self.key_dim)
        v = split(self.v_proj(x), self.value_dim)
        return q, k, v

    def recurrence_inputs(self, q, k, v, steps):
        """Complex q~, conj k~ and the log decay g; padded steps (``steps`` False) become identity steps."""
        complex_dtype = torch.complex128 if q.dtype == torch.float64 else torch.complex64
        qc = torch.complex(q[..., 0::2], q[..., 1::2]).to(complex_dtype)
        kc = torch.complex(k[..., 0::2], -k[..., 1::2]).to(complex_dtype)
        B, H, L, P = qc.shape
        log_decay = torch.complex(torch.log(self.gamma.to(q.dtype))[:, None].expand(H, P), self.theta.to(q.dtype)[None, :].expand(H, P))
        g = log_decay.to(complex_dtype)[None, :, None, :].expand(B, H, L, P)
        if steps is not None:
            keep = steps[:, None, :, None]
            g = torch.where(keep, g, torch.zeros_like(g))
            kc = torch.where(keep, kc, torch.zeros_like(kc))
        return qc, kc, v.to(complex_dtype), g

    def forward(self, x, state: RecurrentState | None = None, steps=None):
        B, L, _ = x.shape
        q, k, v = self.projections(x)
        qc, kc, vc, g = self.recurrence_inputs(q, k, v, steps)
        before = state.layers[self.layer_index]["S"] if state is not None else None
        o, final = kernels.call("linear_recurrence", qc, kc, vc, g, initial_state=before)
        if state is not None:
            state.commit(self.layer_index, {"S": final}, {"k": kc, "v": vc, "g": g})
        o = o.real.to(x.dtype).transpose(1, 2).reshape(B, L, self.n_heads * self.value_dim)
        o = self.group_norm(o.reshape(B * L, -1)).view(B, L, -1)
        return self.out_proj(F.silu(self.g_proj(x)) * o)

    def replay(self, before: dict, record: dict, keep: torch.Tensor) -> dict:
        """The state after feeding only the kept steps of the last advance."""
        return {"S": replay_linear_recurrence(before["S"], record, keep)}


class ViR(RecurrentBackbone):
    """A stack of pre-norm retention blocks; causal pattern only (retention is a causal recurrence)."""

    name = "vir-retention"
    causal_reason = "retention is a causal recurrence"

    def __init__(self, cfg):
        blocks = (PreNormResidualBlock(cfg.d_model, cfg.ffn_mult, cfg.norm_eps, MultiScaleRetention(cfg, i), mixer_name="retention") for i in range(cfg.n_layers))
        super().__init__(cfg, blocks)

    def layer_state(self, batch_size, device, dtype):
        mixer = self.layers[0].retention
        shape = (batch_size, mixer.n_heads, mixer.key_dim // 2, mixer.value_dim)
        return {"S": torch.zeros(shape, device=device, dtype=complex_dtype_for(dtype))}


def build(config, ctx) -> ViR:
    return ViR(config)
