"""The SMR backbone: state memory replay in front of a diagonal SSM, and its recurrent state.

Block, for h (B, L, D)::

    u    = LN(h)
    u'   = u + sum_{j=1..m} p_j * u_{t-j}         (SMR: learnable memory of the last m inputs)
    y    = SSM(u')                                 DiagonalSSM: fft_conv in training, modal recurrence when decoding
    h    = h + W_o gelu(y), then + FFN(LN(.))

State per layer: the SSM's modal state and the window of the last m inputs u. Padding: each row's
real tokens are moved to the front of the advance (stable), so padding only trails; trailing
padded steps are identity steps of the SSM and never enter the window.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from genloom.core.model import Backbone
from genloom.core.pattern import CAUSAL, AttentionPattern
from genloom.toolkit.recurrent import RecurrentState
from genloom.toolkit.ssm import DiagonalSSM


class StateMemoryReplay(nn.Module):
    """``u'_t = u_t + sum_j p_j * u_{t-j}``: a causal, input-only memory of m steps (p starts at 0)."""

    def __init__(self, channels: int, steps: int):
        super().__init__()
        self.steps = steps
        self.memory = nn.Parameter(torch.zeros(steps, channels))

    def forward(self, u: torch.Tensor, window: torch.Tensor | None = None) -> torch.Tensor:
        """``u`` (B, L, D); ``window`` (B, m, D) the m inputs before it (zeros when None)."""
        if self.steps == 0:
            return u
        B, L, D = u.shape
        if window is None:
            window = u.new_zeros(B, self.steps, D)
        history = torch.cat([window, u], 1)  # (B, m + L, D)
        out = u
        for j in range(1, self.steps + 1):
            out = out + self.memory[j - 1].to(u.dtype) * history[:, self.steps - j : self.steps - j + L]
        return out


class SMRBlock(nn.Module):
    def __init__(self, cfg, layer_index: int):
        super().__init__()
        self.layer_index = layer_index
        D = cfg.d_model
        self.norm1 = nn.LayerNorm(D, eps=cfg.norm_eps)
        self.smr = StateMemoryReplay(D, cfg.memory_steps)
        self.ssm = DiagonalSSM(D, cfg.state_size, cfg.dt_min, cfg.dt_max)
        self.out = nn.Linear(D, D)
        self.norm2 = nn.LayerNorm(D, eps=cfg.norm_eps)
        self.ffn = nn.Sequential(nn.Linear(D, cfg.ffn_mult * D), nn.GELU(), nn.Linear(cfg.ffn_mult * D, D))

    def forward(self, h, state: RecurrentState | None = None, steps=None, counts=None):
        u = self.norm1(h)
        if state is None:
            y = self.ssm.convolve(self.smr(u))
        else:
            layer = state.layers[self.layer_index]
            adjusted = self.smr(u, layer["window"].to(u.dtype))
            y, final, record = self.ssm.recur(adjusted, layer["s"], steps)
            window = _last_inputs(layer["window"], u, counts, self.smr.steps)
            record["u"] = u
            state.commit(self.layer_index, {"s": final, "window": window}, record)
        h = h + self.out(F.gelu(y))
        return h + self.ffn(self.norm2(h))

    def replay(self, before: dict, record: dict, keep: torch.Tensor) -> dict:
        return {"s": self.ssm.replay(before["s"], record, keep), "window": _last_inputs(before["window"], record["u"], keep.sum(1), self.smr.steps)}


def _last_inputs(window, u, counts, steps):
    """The last ``steps`` real inputs after feeding ``u`` whose first ``counts[b]`` rows are real."""
    if steps == 0:
        return window
    history = torch.cat([window.to(u.dtype), u], 1)
    index = (counts.to(u.device)[:, None] + torch.arange(steps, device=u.device))[..., None].expand(-1, -1, u.shape[-1])
    return history.gather(1, index)


class SMR(Backbone):
    """SMR + diagonal SSM blocks; causal pattern only."""

    patterns = frozenset({"causal"})

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.layers = nn.ModuleList(SMRBlock(cfg, i) for i in range(cfg.n_layers))
        self.norm = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)

    def forward(self, h: torch.Tensor, *, pattern: AttentionPattern = CAUSAL, state: RecurrentState | None = None, valid: torch.Tensor | None = None) -> torch.Tensor:
        if not self.supports(pattern):
            raise ValueError(f"the smr backbone serves only the causal pattern (a causal convolution cannot look ahead), got '{pattern.kind}'")
        B, L, _ = h.shape
        order = None
        if valid is not None and not bool(valid.all()):
            # move each row's real tokens to the front (stable), so padding only trails
            valid = valid.to(device=h.device, dtype=torch.bool)
            order = torch.sort((~valid).to(torch.int8), dim=1, stable=True).indices
            h = h.gather(1, order[..., None].expand_as(h))
        counts = valid.sum(1) if valid is not None else torch.full((B,), L, dtype=torch.long, device=h.device)
        steps = None
        if state is not None:
            steps = state.begin(torch.arange(L, device=h.device)[None, :] < counts[:, None], L)
        for layer in self.layers:
            h = layer(h, state=state, steps=steps, counts=counts)
        h = self.norm(h)
        if order is not None:
            h = torch.empty_like(h).scatter(1, order[..., None].expand_as(h), h)
        return h

    def init_state(self, batch_size: int, capacity: int = 256, device=None, dtype=None) -> RecurrentState:
        """Per layer the SSM's modal state and the last ``memory_steps`` inputs; ``capacity`` is ignored."""
        param = next(self.parameters())
        device = device if device is not None else param.device
        dtype = dtype if dtype is not None else param.dtype
        layers = [
            {"s": block.ssm.init_state(batch_size, device=device, dtype=dtype), "window": torch.zeros(batch_size, self.cfg.memory_steps, self.cfg.d_model, device=device, dtype=dtype)}
            for block in self.layers
        ]
        return RecurrentState(layers, self._replay, batch_size, device=device)

    def _replay(self, index, before, record, keep):
        return self.layers[index].replay(before, record, keep)


def build(config, ctx) -> SMR:
    return SMR(config)
