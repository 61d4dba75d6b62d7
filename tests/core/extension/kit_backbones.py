"""A small recurrent backbone written against the State contract, and broken variants of it that
the conformance kit must reject (tests/core/test_kit.py)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from genloom.core import hookimpl, records
from genloom.core.model import Backbone
from genloom.core.state import State, as_lengths


@dataclass
class EMAConfig:
    """An exponential moving average of projected inputs."""

    d_model: int = 8
    """Model width."""

    def bind(self, ctx):
        ctx.set("d_model", self.d_model)


class EMAState(State):
    """The running average (B, D) per sequence, with the (average, lengths) after each step of the last advance."""

    def __init__(self, batch, d_model, device=None, dtype=None):
        self.s = torch.zeros(batch, d_model, device=device, dtype=dtype)
        self._lengths = torch.zeros(batch, dtype=torch.long, device=device)
        self.history = [(self.s, self._lengths)]

    @property
    def lengths(self):
        return self._lengths

    def reorder(self, index):
        self.s, self._lengths = self.s.index_select(0, index), self._lengths.index_select(0, index)
        self.history = [(s.index_select(0, index), n.index_select(0, index)) for s, n in self.history]

    def rollback(self, lengths):
        lengths = as_lengths(lengths, self.s.shape[0], self.s.device)
        rows = []
        for b, target in enumerate(lengths.tolist()):
            found = [s[b] for s, n in reversed(self.history) if int(n[b]) == target]
            if not found:
                raise ValueError(f"row {b} cannot roll back to {target} tokens")
            rows.append(found[0])
        self.s, self._lengths = torch.stack(rows), lengths.clone()
        self.history = [(self.s, self._lengths)]

    def snapshot(self):
        return self.s.clone(), self._lengths.clone()

    def restore(self, snap):
        self.s, self._lengths = snap[0].clone(), snap[1].clone()
        self.history = [(self.s, self._lengths)]


class EMABackbone(Backbone):
    patterns = frozenset({"causal"})
    state_class = EMAState

    def __init__(self, config, ctx=None):
        super().__init__()
        self.inp = nn.Linear(config.d_model, config.d_model)
        self.decay = nn.Parameter(torch.zeros(config.d_model))
        self.out = nn.Linear(config.d_model, config.d_model)

    def forward(self, h, *, pattern=None, state=None, valid=None):
        B, L, D = h.shape
        s = state.s if state is not None else h.new_zeros(B, D)
        lengths = state.lengths if state is not None else torch.zeros(B, dtype=torch.long)
        keep = torch.ones(B, L, dtype=torch.bool) if valid is None else valid.bool()
        a = torch.sigmoid(self.decay)
        u = self.inp(h)
        outs, history = [], []
        for t in range(L):
            s = torch.where(keep[:, t, None], a * s + (1 - a) * u[:, t], s)  # padding leaves the average alone
            lengths = lengths + keep[:, t].long()
            outs.append(s)
            history.append((s, lengths))
        if state is not None:
            state.history = [(state.s, state.lengths)] + history
            state.s, state._lengths = s, lengths
        return h + self.out(torch.tanh(torch.stack(outs, 1)))

    def init_state(self, batch_size, capacity=256, device=None, dtype=None):
        return self.state_class(batch_size, self.out.in_features, device, dtype or self.out.weight.dtype)


class NoopReorderState(EMAState):
    def reorder(self, index):  # broken: keeps the old rows
        pass


class LengthsOnlyReorderState(EMAState):
    def reorder(self, index):  # broken: moves the lengths but not the running averages
        self._lengths = self._lengths.index_select(0, index)


class NoopReorder(EMABackbone):
    state_class = NoopReorderState


class LengthsOnlyReorder(EMABackbone):
    state_class = LengthsOnlyReorderState


class IgnoresValid(EMABackbone):
    def forward(self, h, *, pattern=None, state=None, valid=None):  # broken: treats padding as tokens
        return super().forward(h, pattern=pattern, state=state, valid=None)


@hookimpl
def genloom_backbones():
    names = {"ema": "EMABackbone", "ema-noop-reorder": "NoopReorder", "ema-lengths-only-reorder": "LengthsOnlyReorder", "ema-ignores-valid": "IgnoresValid"}
    return [records.backbone(name, f"kit_backbones:{cls}", EMAConfig, "test backbone") for name, cls in names.items()]
