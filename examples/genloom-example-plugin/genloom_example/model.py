"""The torch side of `example`: imported only when a component is built."""

import torch
from torch import nn

from genloom.core.generation import Decoder
from genloom.core.model import Backbone
from genloom.core.state import State, as_lengths


class ConvState(State):
    """The last kernel_size - 1 inputs of every sequence, with a history for rollback."""

    def __init__(self, batch_size, d_model, kernel_size, device=None, dtype=None):
        self.window = torch.zeros(batch_size, kernel_size - 1, d_model, device=device, dtype=dtype)
        self.history = [self.window]
        self._lengths = torch.zeros(batch_size, dtype=torch.long, device=device)

    @property
    def lengths(self):
        return self._lengths

    def reorder(self, index):
        self.window = self.window.index_select(0, index)
        self.history = [w.index_select(0, index) for w in self.history]
        self._lengths = self._lengths.index_select(0, index)

    def rollback(self, lengths):
        lengths = as_lengths(lengths, self.window.shape[0], self.window.device)
        back = self._lengths - lengths
        if bool((back < 0).any()) or int(back.max()) >= len(self.history):
            raise ValueError("can only roll back within the kept history")
        rows = [self.history[len(self.history) - 1 - int(b)][i] for i, b in enumerate(back.tolist())]
        self.window = torch.stack(rows)
        self.history = [self.window]
        self._lengths = lengths.clone()

    def snapshot(self):
        return (self.window.clone(), self._lengths.clone())

    def restore(self, snap):
        self.window, self._lengths = snap[0].clone(), snap[1].clone()
        self.history = [self.window]


class ConvBackbone(Backbone):
    patterns = frozenset({"causal"})

    def __init__(self, cfg):
        super().__init__()
        self.k = cfg.kernel_size
        self.weight = nn.Parameter(torch.randn(cfg.d_model, cfg.kernel_size) * 0.2)
        self.gate = nn.Linear(cfg.d_model, cfg.d_model)
        self.out = nn.Linear(cfg.d_model, cfg.d_model)

    def _mix(self, padded):
        # padded: (B, k - 1 + L, D) -> (B, L, D) causal depthwise convolution
        windows = padded.unfold(1, self.k, 1)  # (B, L, D, k)
        return (windows * self.weight).sum(-1)

    def forward(self, h, *, pattern=None, state=None, valid=None):
        B, L, D = h.shape
        past = state.window if state is not None else h.new_zeros(B, self.k - 1, D)
        padded = torch.cat([past, h], 1)
        y = self._mix(padded) * torch.sigmoid(self.gate(h))
        if state is not None:
            for i in range(L):
                state.history.append(padded[:, i + 1 : i + self.k])
            state.history = state.history[-(L + 1):]
            state.window = padded[:, padded.shape[1] - (self.k - 1):]
            state._lengths = state._lengths + L
        return h + self.out(y)

    def init_state(self, batch_size, capacity=256, device=None, dtype=None):
        return ConvState(batch_size, self.weight.shape[0], self.k, device, dtype or self.weight.dtype)


class TopK(Decoder):
    def choose(self, session, logits):
        top = logits.topk(min(self.config.k, logits.shape[-1]), -1)
        pick = session.model.head.sample(top.values, session.generator)
        return top.indices.gather(-1, pick[:, None])[:, 0]


def build_backbone(config, ctx):
    return ConvBackbone(config)


def build_decoder(config, ctx):
    return TopK(config, ctx)
