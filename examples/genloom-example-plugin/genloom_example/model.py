"""The torch side of `example`: imported only when a component is built."""

import torch
from torch import nn

from genloom.core.generation import Decoder
from genloom.core.model import Backbone
from genloom.core.state import State, as_lengths


class ConvState(State):
    """The last kernel_size - 1 inputs of every sequence, with a history of (window, lengths) for rollback."""

    def __init__(self, batch_size, d_model, kernel_size, device=None, dtype=None):
        self.window = torch.zeros(batch_size, kernel_size - 1, d_model, device=device, dtype=dtype)
        self._lengths = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.history = [(self.window, self._lengths)]

    @property
    def lengths(self):
        return self._lengths

    def reorder(self, index):
        self.window = self.window.index_select(0, index)
        self._lengths = self._lengths.index_select(0, index)
        self.history = [(w.index_select(0, index), n.index_select(0, index)) for w, n in self.history]

    def rollback(self, lengths):
        lengths = as_lengths(lengths, self.window.shape[0], self.window.device)
        rows = []
        for b, target in enumerate(lengths.tolist()):
            # the latest kept window of row b after exactly `target` tokens
            found = [w[b] for w, n in reversed(self.history) if int(n[b]) == target]
            if not found:
                raise ValueError(f"row {b} cannot roll back to {target} tokens: only the last advance is kept")
            rows.append(found[0])
        self.window = torch.stack(rows)
        self._lengths = lengths.clone()
        self.history = [(self.window, self._lengths)]

    def snapshot(self):
        return (self.window.clone(), self._lengths.clone())

    def restore(self, snap):
        self.window, self._lengths = snap[0].clone(), snap[1].clone()
        self.history = [(self.window, self._lengths)]


class ConvBackbone(Backbone):
    patterns = frozenset({"causal"})

    def __init__(self, cfg):
        super().__init__()
        self.k = cfg.kernel_size
        self.weight = nn.Parameter(torch.randn(cfg.d_model, cfg.kernel_size) * 0.2)
        self.gate = nn.Linear(cfg.d_model, cfg.d_model)
        self.out = nn.Linear(cfg.d_model, cfg.d_model)

    def forward(self, h, *, pattern=None, state=None, valid=None):
        B, L, D = h.shape
        window = state.window if state is not None else h.new_zeros(B, self.k - 1, D)
        lengths = state.lengths if state is not None else torch.zeros(B, dtype=torch.long, device=h.device)
        keep = torch.ones(B, L, dtype=torch.bool, device=h.device) if valid is None else valid.to(h.device, torch.bool)
        history, mixed = [], []
        for t in range(L):
            full = torch.cat([window, h[:, t : t + 1]], 1)  # (B, k, D): the causal window ending at t
            mixed.append((full.transpose(1, 2) * self.weight).sum(-1))
            # a padding token (valid False) neither enters the window nor counts as a token
            window = torch.where(keep[:, t, None, None], full[:, 1:], window)
            lengths = lengths + keep[:, t].long()
            history.append((window, lengths))
        y = torch.stack(mixed, 1) * torch.sigmoid(self.gate(h))
        if state is not None:
            state.history = [(state.window, state.lengths)] + history
            state.window, state._lengths = window, lengths
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
