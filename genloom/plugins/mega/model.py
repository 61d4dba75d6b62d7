"""The Mega backbone: damped-EMA + gated single-head attention blocks, and their state.

Layer (Ma et al. 2022, eq. 2-3, 7-12), for x (B, L, d) (normalised input xn = LN(x))::

    ema    = conv(xn, K) with K[c, k] = sum_j eta[c,j] alpha[c,j] (1 - alpha[c,j] delta[c,j])^k beta[c,j]
    x'     = silu(ema + omega * xn)
    z      = silu(x' W_z);   q = kappa_q z + mu_q;   k = kappa_k z + mu_k;   v = silu(xn W_v)
    o      = softmax(q k^T / sqrt(z_dim), causal [, same chunk]) v
    gamma  = silu(x' W_gamma);   phi = sigmoid(x' W_phi)
    h      = silu(x' W_h + (gamma * o) U_h)
    y      = phi * h + (1 - phi) * x                                  then + FFN(LN(y))
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from genloom.core import kernels
from genloom.core.model import Backbone
from genloom.core.pattern import CAUSAL, AttentionPattern
from genloom.core.state import KVCache, State
from genloom.toolkit.recurrent import RecurrentState, replay_linear_recurrence


class MultiHeadEMA(nn.Module):
    """Mega's multi-dimensional damped EMA over ``channels`` with expansion ``dim``."""

    def __init__(self, channels: int, dim: int):
        super().__init__()
        self.channels, self.dim = channels, dim
        self.alpha_logit = nn.Parameter(torch.randn(channels, dim) * 0.2)
        self.delta_logit = nn.Parameter(torch.randn(channels, dim) * 0.2)
        signs = torch.tensor([1.0, -1.0]).repeat((dim + 1) // 2)[:dim]
        self.beta = nn.Parameter(signs + 0.02 * torch.randn(channels, dim))
        self.eta = nn.Parameter(torch.randn(channels, dim) / math.sqrt(dim))
        self.omega = nn.Parameter(torch.randn(channels))

    def coefficients(self, dtype):
        alpha, delta = torch.sigmoid(self.alpha_logit.to(dtype)), torch.sigmoid(self.delta_logit.to(dtype))
        return alpha, torch.log1p(-alpha * delta)  # input weight, log decay log(1 - alpha delta)

    def kernel(self, length: int, dtype) -> torch.Tensor:
        """K (channels, length) = sum_j eta alpha beta (1 - alpha delta)^k."""
        alpha, log_decay = self.coefficients(dtype)
        k = torch.arange(length, device=alpha.device, dtype=dtype)
        return torch.einsum("cj,cjk->ck", self.eta.to(dtype) * alpha * self.beta.to(dtype), torch.exp(log_decay[..., None] * k))

    def convolve(self, x: torch.Tensor) -> torch.Tensor:
        return kernels.call("fft_conv", x, self.kernel(x.shape[1], x.dtype))

    def recurrence_inputs(self, x, steps):
        B, L, C = x.shape
        alpha, log_decay = self.coefficients(x.dtype)
        q = self.eta.to(x.dtype)[None, :, None, :].expand(B, C, L, self.dim)
        k = (alpha * self.beta.to(x.dtype))[None, :, None, :].expand(B, C, L, self.dim)
        g = log_decay[None, :, None, :].expand(B, C, L, self.dim)
        v = x.transpose(1, 2)[..., None]
        if steps is not None:
            keep = steps[:, None, :, None]
            g, k = torch.where(keep, g, torch.zeros_like(g)), torch.where(keep, k, torch.zeros_like(k))
        return q, k, v, g

    def recur(self, x, before=None, steps=None):
        q, k, v, g = self.recurrence_inputs(x, steps)
        y, final = kernels.call("linear_recurrence", q, k, v, g, initial_state=before)
        return y[..., 0].transpose(1, 2), final, {"k": k, "v": v, "g": g}


class MegaState(State):
    """Per layer the EMA state (a :class:`RecurrentState`) and the attention cache (:class:`KVCache`)."""

    rollback_any = False

    def __init__(self, ema: RecurrentState, cache: KVCache):
        self.ema, self.cache = ema, cache

    @property
    def lengths(self):
        return self.ema.lengths

    def reorder(self, index):
        self.ema.reorder(index)
        self.cache.reorder(index)

    def rollback(self, lengths):
        self.ema.rollback(lengths)  # validates (within the last advance) before the cache moves
        self.cache.rollback(lengths)

    def snapshot(self):
        return self.ema.snapshot(), self.cache.snapshot()

    def restore(self, snap):
        self.ema.restore(snap[0])
        self.cache.restore(snap[1])


def chunked_causal_attention(q, k, v, pos_q, pos_k, valid_k, chunk_size):
    """Softmax attention of q (B, Lq, z) over k, v (B, S, ·) where pos_k <= pos_q, the key is
    valid and (Mega-chunk) both sit in the same chunk of ``chunk_size`` positions."""
    allowed = (pos_k[:, None, :] <= pos_q[:, :, None]) & valid_k[:, None, :]
    if chunk_size is not None:
        allowed = allowed & (torch.div(pos_k, chunk_size, rounding_mode="floor")[:, None, :] == torch.div(pos_q, chunk_size, rounding_mode="floor")[:, :, None])
    scores = (q @ k.transpose(1, 2)) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~allowed, float("-inf"))
    any_key = allowed.any(-1, keepdim=True)
    weights = torch.softmax(torch.where(any_key, scores, torch.zeros_like(scores)), -1) * any_key
    return weights @ v


class MegaLayer(nn.Module):
    def __init__(self, cfg, layer_index: int):
        super().__init__()
        self.layer_index = layer_index
        self.chunk_size = cfg.chunk_size
        d, z, v = cfg.d_model, cfg.qk_dim, cfg.value_dim
        self.norm = nn.LayerNorm(d, eps=cfg.norm_eps)
        self.ema = MultiHeadEMA(d, cfg.ema_dim)
        self.to_v = nn.Linear(d, v)
        self.to_mx = nn.Linear(d, z + v + 2 * d)  # z, gamma (v), phi (d), h (d) from x'
        self.qk_scale = nn.Parameter(torch.randn(2, z) * 0.02 + 1.0)
        self.qk_offset = nn.Parameter(torch.zeros(2, z))
        self.h_proj = nn.Linear(v, d)
        self.dims = (z, v, d, d)

    def forward(self, x, state: MegaState | None = None, steps=None, positions=None):
        xn = self.norm(x)
        if state is None and steps is None:
            smoothed = self.ema.convolve(xn)
        else:
            before = state.ema.layers[self.layer_index]["s"] if state is not None else None
            smoothed, final, record = self.ema.recur(xn, before, steps)
            if state is not None:
                state.ema.commit(self.layer_index, {"s": final}, record)
        mx = F.silu(smoothed + self.ema.omega.to(x.dtype) * xn)
        z, gamma, phi, h = self.to_mx(mx).split(self.dims, -1)
        z = F.silu(z)
        q = z * self.qk_scale[0] + self.qk_offset[0]
        k = z * self.qk_scale[1] + self.qk_offset[1]
        v = F.silu(self.to_v(xn))
        if state is not None:
            k_all, v_all, pos_k, valid_k = state.cache.update(self.layer_index, k[:, None], v[:, None])
            o = chunked_causal_attention(q, k_all[:, 0], v_all[:, 0], positions, pos_k, valid_k, self.chunk_size)
        else:
            valid = steps if steps is not None else torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
            pos = valid.long().cumsum(1) - 1
            o = chunked_causal_attention(q, k, v, pos.clamp_min(0), pos, valid, self.chunk_size)
        h = F.silu(h + self.h_proj(F.silu(gamma) * o))
        phi = torch.sigmoid(phi)
        return phi * h + (1 - phi) * x

    def replay(self, before: dict, record: dict, keep: torch.Tensor) -> dict:
        return {"s": replay_linear_recurrence(before["s"], record, keep)}


class MegaBlock(nn.Module):
    def __init__(self, cfg, layer_index: int):
        super().__init__()
        self.mega = MegaLayer(cfg, layer_index)
        self.norm = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.ffn = nn.Sequential(nn.Linear(cfg.d_model, cfg.ffn_mult * cfg.d_model), nn.GELU(), nn.Linear(cfg.ffn_mult * cfg.d_model, cfg.d_model))

    def forward(self, h, **kw):
        h = self.mega(h, **kw)
        return h + self.ffn(self.norm(h))


class Mega(Backbone):
    """A stack of Mega blocks; causal pattern only (the EMA and the attention look back)."""

    patterns = frozenset({"causal"})

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.layers = nn.ModuleList(MegaBlock(cfg, i) for i in range(cfg.n_layers))
        self.norm = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)

    def forward(self, h: torch.Tensor, *, pattern: AttentionPattern = CAUSAL, state: MegaState | None = None, valid: torch.Tensor | None = None) -> torch.Tensor:
        if not self.supports(pattern):
            raise ValueError(f"the mega backbone serves only the causal pattern, got '{pattern.kind}'")
        steps = valid.to(device=h.device, dtype=torch.bool) if valid is not None and not bool(valid.all()) else None
        positions = None
        if state is not None:
            steps = state.ema.begin(valid, h.shape[1])
            positions, _ = state.cache.begin(valid, h.shape[1])
        for layer in self.layers:
            h = layer(h, state=state, steps=steps, positions=positions)
        return self.norm(h)

    def init_state(self, batch_size: int, capacity: int = 256, device=None, dtype=None) -> MegaState:
        param = next(self.parameters())
        device = device if device is not None else param.device
        dtype = dtype if dtype is not None else param.dtype
        cfg = self.cfg
        ema = RecurrentState([{"s": torch.zeros(batch_size, cfg.d_model, cfg.ema_dim, 1, device=device, dtype=dtype)} for _ in self.layers], self._replay, batch_size, device=device)
        # one cache "head" whose key slots hold k (z wide) and value slots v (value_dim wide): pad to the wider
        cache = _MegaCache(cfg.n_layers, batch_size, cfg.qk_dim, cfg.value_dim, capacity, device=device, dtype=dtype)
        return MegaState(ema, cache)

    def _replay(self, index, before, record, keep):
        return self.layers[index].mega.replay(before, record, keep)


class _MegaCache(KVCache):
    """A KVCache whose keys and values have different widths (z and v)."""

    def __init__(self, n_layers, batch_size, key_dim, value_dim, capacity, *, device=None, dtype=torch.float32):
        super().__init__(n_layers, batch_size, 1, key_dim, capacity, device=device, dtype=dtype)
        self.v = [torch.zeros(batch_size, 1, max(capacity, 1), value_dim, device=device, dtype=dtype) for _ in range(n_layers)]


def build(config, ctx) -> Mega:
    return Mega(config)
