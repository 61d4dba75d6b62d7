"""Causal transformer with a time-aware rotary embedding.

For a head of width Dh, plane p (coordinates p and p + Dh/2, the rotate-half convention) of the
query and key of event i is turned by the angle

    phi_p(i) = pos_i * w_p                     for the first Dh/2 - T planes (position planes),
    phi_p(i) = (t_i / time_scale) * u_k        for the last T planes (time planes, k = 0..T-1),

with w_p = theta^(-2p/Dh), u_k = time_theta^(-k/T) (time has its own frequency ladder, from 1
down to 1/time_theta, so typical gaps of a few ``time_scale`` units turn by useful angles) and
T = ``time_planes``. Since a rotation by phi(i) of q_i dotted with a
rotation by phi(j) of k_j equals q_i . R(phi(j) - phi(i)) k_j, every attention logit depends on the
events only through pos_j - pos_i and t_j - t_i: adding a constant to all timestamps leaves every
logit (and so the output) unchanged. ``absolute_time`` is the broken variant the tests use: only
the queries turn with the timestamp (keys keep angle 0 on the time planes), so a logit depends on
the query's absolute time and shifts change it.
"""

from __future__ import annotations

import torch
from torch import nn

from genloom.core.model import Backbone
from genloom.core.pattern import CAUSAL
from genloom.core.state import begin_chunk


def rotate_half(x):
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


class TimeRotary(nn.Module):
    def __init__(self, head_dim: int, time_planes: int, theta: float, time_scale: float, time_theta: float):
        super().__init__()
        half = head_dim // 2
        position = 1.0 / theta ** (torch.arange(half - time_planes, dtype=torch.float64) * 2 / head_dim)
        time = 1.0 / time_theta ** (torch.arange(time_planes, dtype=torch.float64) / max(time_planes, 1))
        self.register_buffer("inv_freq", torch.cat((position, time)), persistent=False)
        self.position_planes, self.time_scale = half - time_planes, time_scale

    def angles(self, positions: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
        """(B, L, Dh/2) angles: position planes from positions, time planes from timestamps."""
        clock = torch.cat((positions[..., None].to(times.dtype).expand(*positions.shape, self.position_planes),
                           (times / self.time_scale)[..., None].expand(*times.shape, self.inv_freq.numel() - self.position_planes)), dim=-1)
        return clock * self.inv_freq.to(times.dtype)

    def forward(self, positions, times, dtype):
        phi = self.angles(positions, times)
        emb = torch.cat((phi, phi), dim=-1)
        return emb.cos().to(dtype)[:, None], emb.sin().to(dtype)[:, None]  # (B, 1, L, Dh)


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d = cfg.d_model
        self.n_heads = cfg.n_heads
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.out = nn.Linear(d, 3 * d, bias=False), nn.Linear(d, d, bias=False)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d), nn.Dropout(cfg.dropout))
        self.drop = nn.Dropout(cfg.dropout)

    def logits(self, h, rope):
        """(B, H, L, L) pre-mask attention logits of this block for input h, and the values."""
        B, L, D = h.shape
        q, k, v = self.qkv(self.norm1(h)).view(B, L, 3, self.n_heads, D // self.n_heads).permute(2, 0, 3, 1, 4)
        (cos, sin), (cos_k, sin_k) = rope
        q, k = q * cos + rotate_half(q) * sin, k * cos_k + rotate_half(k) * sin_k
        return q @ k.transpose(-1, -2) / (q.shape[-1] ** 0.5), v

    def forward(self, h, rope, mask):
        scores, v = self.logits(h, rope)
        attn = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1) @ v
        h = h + self.drop(self.out(attn.transpose(1, 2).reshape(h.shape)))
        return h + self.mlp(self.norm2(h))


class SynergenBackbone(Backbone):
    """Causal only; ``forward(h, times=..., query_times=...)`` with (B, L) timestamps (None: all zero).

    ``query_times`` (default: ``times``) are the times the queries turn with: the objective passes
    the next event's timestamp, so each prediction attends to the history by how long before the
    predicted event each past event happened (still a function of time differences only)."""

    patterns = frozenset({"causal"})

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.rotary = TimeRotary(cfg.d_model // cfg.n_heads, cfg.time_planes, cfg.rope_theta, cfg.time_scale, cfg.time_theta)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = nn.LayerNorm(cfg.d_model)
        self.absolute_time = False
        """Broken variant for tests: keys ignore the timestamp (a rotation by absolute query time)."""

    def _inputs(self, h, times, valid, query_times=None):
        B, L, _ = h.shape
        if times is None:
            times = torch.zeros(B, L, dtype=h.dtype, device=h.device)
        positions, valid = begin_chunk(h, None, valid)
        mask = torch.ones(L, L, dtype=torch.bool, device=h.device).tril()[None, None]
        if valid is not None:
            mask = mask & valid[:, None, None, :].bool()
        tdtype = torch.float64 if h.dtype == torch.float64 else torch.float32
        times = times.to(tdtype)
        rope_k = self.rotary(positions, times, h.dtype)
        rope_q = rope_k if query_times is None else self.rotary(positions, query_times.to(tdtype), h.dtype)
        if self.absolute_time:
            rope_k = self.rotary(positions, torch.zeros_like(times), h.dtype)
        return h, (rope_q, rope_k), mask

    def forward(self, h, *, pattern=CAUSAL, state=None, valid=None, times=None, query_times=None):
        if state is not None:
            raise NotImplementedError("the synergen backbone keeps no incremental state; call it on the whole prefix")
        h, rope, mask = self._inputs(h, times, valid, query_times)
        for block in self.layers:
            h = block(h, rope, mask)
        return self.norm(h)

    def attention_logits(self, h, times=None, valid=None, query_times=None) -> list[torch.Tensor]:
        """The (B, H, L, L) pre-mask logits of every block (for tests and inspection)."""
        h, rope, mask = self._inputs(h, times, valid, query_times)
        out = []
        for block in self.layers:
            out.append(block.logits(h, rope)[0])
            h = block(h, rope, mask)
        return out


def build(config, ctx=None):
    return SynergenBackbone(config)
