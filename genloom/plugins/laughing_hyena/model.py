"""The Laughing Hyena backbone: order-2 Hyena blocks with implicit or modal (distilled) long filters.

Block, for x (B, L, D), filters tied per head (D / heads channels share one)::

    x1, x2, v = split(W_in LN(x))
    u         = x1 * v
    z         = h conv u + skip * u                (causal long convolution per channel)
    out       = x + W_o (x2 * z), then + FFN(LN(.))

Full sequences convolve through the ``fft_conv`` op with ``h = filter.kernel(L)``. Decoding:

- implicit filter: the state is a :class:`~genloom.core.state.KVCache` holding the history of
  ``u`` (positions and validity per slot); a new token's output sums the filter over the history
  by position difference: O(t) per token, rollback to any point;
- modal filter: the state is the order-d modal state per channel, advanced through the
  ``linear_recurrence`` op (heads = channels, keys = modes, value width 1): O(d) per token.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from genloom.core import kernels
from genloom.core.model import Backbone
from genloom.core.pattern import CAUSAL, AttentionPattern
from genloom.core.state import KVCache
from genloom.plugins.laughing_hyena.filters import ImplicitFilter, ModalFilter
from genloom.toolkit.recurrent import PreNormResidualBlock, RecurrentState, complex_dtype_for, replay_linear_recurrence


def conv_by_positions(u_keys, pos_keys, valid_keys, pos_queries, kernel):
    """Causal convolution over an explicit history: ``y[b, q] = sum_s k[pos_q - pos_s] u[b, s]`` over
    valid slots with pos_s <= pos_q. u_keys (B, S, D), kernel (D, K) with K > max lag."""
    lag = pos_queries[:, :, None] - pos_keys[:, None, :]
    allowed = (lag >= 0) & valid_keys[:, None, :]
    weights = kernel.T[lag.clamp(0, kernel.shape[1] - 1)]  # (B, Lq, S, D)
    return (weights * allowed[..., None] * u_keys[:, None]).sum(2)


class HyenaOperator(nn.Module):
    """Order-2 Hyena operator with one long filter per head."""

    def __init__(self, cfg, layer_index: int):
        super().__init__()
        self.layer_index = layer_index
        self.d_model, self.heads = cfg.d_model, cfg.filter_heads
        self.in_proj = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.out_proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.skip = nn.Parameter(torch.ones(cfg.d_model))
        if cfg.filter == "implicit":
            self.filter = ImplicitFilter(cfg.filter_heads, cfg.filter_hidden, cfg.filter_features, cfg.max_length)
        else:
            self.filter = ModalFilter(cfg.filter_heads, cfg.order)

    @property
    def modal(self) -> bool:
        return isinstance(self.filter, ModalFilter)

    def channel_kernel(self, length: int, dtype) -> torch.Tensor:
        """(D, length): each head's filter repeated over its channels."""
        return self.filter.kernel(length, dtype).repeat_interleave(self.d_model // self.heads, 0)

    def modal_inputs(self, u, steps):
        """The modal recurrence as linear_recurrence inputs (heads = channels, keys = modes)."""
        B, L, D = u.shape
        log_poles, residues = self.filter.log_poles_and_residues(u.dtype)
        per = D // self.heads
        log_poles, residues = log_poles.repeat_interleave(per, 0), residues.repeat_interleave(per, 0)
        d = log_poles.shape[-1]
        q = residues[None, :, None, :].expand(B, D, L, d)
        k = torch.ones_like(q)
        g = log_poles[None, :, None, :].expand(B, D, L, d)
        v = u.transpose(1, 2)[..., None].to(q.dtype)
        if steps is not None:
            keep = steps[:, None, :, None]
            g, k = torch.where(keep, g, torch.zeros_like(g)), torch.where(keep, k, torch.zeros_like(k))
        return q, k, v, g

    def long_conv(self, u, state=None, steps=None, positions=None):
        B, L, D = u.shape
        skip = u * self.skip.to(u.dtype)
        if self.modal and (state is not None or steps is not None):
            before = state.layers[self.layer_index]["s"] if state is not None else None
            q, k, v, g = self.modal_inputs(u, steps)
            y, final = kernels.call("linear_recurrence", q, k, v, g, initial_state=before)
            if state is not None:
                state.commit(self.layer_index, {"s": final}, {"k": k, "v": v, "g": g})
            return y[..., 0].real.transpose(1, 2).to(u.dtype) + skip
        if state is not None:  # implicit filter: sum over the cached history by position
            keys, _, pos_keys, valid_keys = state.update(self.layer_index, u[:, None], u[:, None])
            kernel = self.channel_kernel(int(positions.max()) + 1, u.dtype)
            return conv_by_positions(keys[:, 0], pos_keys, valid_keys, positions, kernel) + skip
        if steps is not None:  # padded steps do not exist: convolve by real-token positions
            pos = steps.long().cumsum(1) - 1
            kernel = self.channel_kernel(L, u.dtype)
            return conv_by_positions(u, pos, steps, pos.clamp_min(0), kernel) + skip
        return kernels.call("fft_conv", u, self.channel_kernel(L, u.dtype), skip=self.skip.to(u.dtype))

    def forward(self, x, state=None, steps=None, positions=None):
        x1, x2, v = self.in_proj(x).chunk(3, -1)
        return self.out_proj(x2 * self.long_conv(x1 * v, state=state, steps=steps, positions=positions))

    def replay(self, before: dict, record: dict, keep: torch.Tensor) -> dict:
        return {"s": replay_linear_recurrence(before["s"], record, keep)}


class LaughingHyena(Backbone):
    """A stack of Hyena blocks; causal pattern only."""

    patterns = frozenset({"causal"})

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.layers = nn.ModuleList(PreNormResidualBlock(cfg.d_model, cfg.ffn_mult, cfg.norm_eps, HyenaOperator(cfg, i), mixer_name="operator") for i in range(cfg.n_layers))
        self.norm = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)

    @property
    def modal(self) -> bool:
        return self.cfg.filter == "modal"

    def forward(self, h: torch.Tensor, *, pattern: AttentionPattern = CAUSAL, state=None, valid: torch.Tensor | None = None) -> torch.Tensor:
        if not self.supports(pattern):
            raise ValueError(f"the laughing-hyena backbone serves only the causal pattern (a causal convolution cannot look ahead), got '{pattern.kind}'")
        steps = valid.to(device=h.device, dtype=torch.bool) if valid is not None and not bool(valid.all()) else None
        positions = None
        if isinstance(state, KVCache):
            positions, steps = state.begin(valid, h.shape[1])
        elif state is not None:
            steps = state.begin(valid, h.shape[1])
        for layer in self.layers:
            h = layer(h, state=state, steps=steps, positions=positions)
        return self.norm(h)

    def init_state(self, batch_size: int, capacity: int = 256, device=None, dtype=None):
        """Modal filters: the (B, D, order, 1) modal state per layer (constant size). Implicit
        filters: a cache of the convolution inputs (grows with the length, like a KV cache)."""
        param = next(self.parameters())
        device = device if device is not None else param.device
        dtype = dtype if dtype is not None else param.dtype
        if not self.modal:
            return KVCache(self.cfg.n_layers, batch_size, 1, self.cfg.d_model, capacity, device=device, dtype=dtype)
        shape = (batch_size, self.cfg.d_model, self.cfg.order, 1)
        layers = [{"s": torch.zeros(shape, device=device, dtype=complex_dtype_for(dtype))} for _ in self.layers]
        return RecurrentState(layers, self._replay, batch_size, device=device)

    def _replay(self, index, before, record, keep):
        return self.layers[index].replay(before, record, keep)


def build(config, ctx) -> LaughingHyena:
    return LaughingHyena(config)
