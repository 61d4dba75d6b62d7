"""The AbbIE backbone: head block, body block iterated r times (shared weights), tail block.

    h = head(x);   h = body(h) r times;   y = tail(h)        (tail ends with the final norm)

Each block is a ``transformer`` backbone from the registry; the state is one cache per block
application.
"""

from __future__ import annotations

import torch
from torch import nn

from genloom.core.model import Backbone
from genloom.core.pattern import CAUSAL, AttentionPattern
from genloom.core.state import State


class IteratedState(State):
    """One sub-state per block application: head, body pass 1..r, tail (any of them optional)."""

    def __init__(self, states: list):
        self.states = states
        self.rollback_any = all(getattr(s, "rollback_any", False) for s in states)

    @property
    def lengths(self):
        return self.states[0].lengths

    def reorder(self, index):
        for s in self.states:
            s.reorder(index)

    def rollback(self, lengths):
        for s in self.states:
            s.rollback(lengths)

    def snapshot(self):
        return [s.snapshot() for s in self.states]

    def restore(self, snap):
        for s, part in zip(self.states, snap):
            s.restore(part)


class AbbIE(Backbone):
    patterns = frozenset({"causal"})

    def __init__(self, cfg, ctx):
        super().__init__()
        self.cfg = cfg
        node = dict(cfg.block)

        def block(layers, final_norm, part):
            return ctx.build("backbone", {**node, "d_model": cfg.d_model, "n_layers": layers, "final_norm": final_norm}, path=f"backbone.block.<{part}>")

        self.head = block(cfg.head_layers, False, "head") if cfg.head_layers else None
        self.body = block(cfg.body_layers, cfg.tail_layers == 0, "body")
        self.tail = block(cfg.tail_layers, True, "tail") if cfg.tail_layers else None
        ctx.set("d_model", cfg.d_model)

    @property
    def current_iterations(self) -> int:
        if not self.training and self.cfg.test_iterations is not None:
            return self.cfg.test_iterations
        return self.cfg.iterations

    def parts(self, iterations: int):
        return ([self.head] if self.head is not None else []) + [self.body] * iterations + ([self.tail] if self.tail is not None else [])

    def forward(self, h: torch.Tensor, *, pattern: AttentionPattern = CAUSAL, state: IteratedState | None = None, valid=None) -> torch.Tensor:
        if not self.supports(pattern):
            raise ValueError(f"the abbie backbone serves only the causal pattern (an autoregressive encoder), got '{pattern.kind}'")
        parts = self.parts(self.current_iterations if state is None else len(state.states) - (self.head is not None) - (self.tail is not None))
        for i, part in enumerate(parts):
            h = part(h, pattern=pattern, state=state.states[i] if state is not None else None, valid=valid)
        return h

    def init_state(self, batch_size: int, capacity: int = 256, device=None, dtype=None) -> IteratedState:
        """One cache per block application at the current number of iterations."""
        return IteratedState([part.init_state(batch_size, capacity, device=device, dtype=dtype) for part in self.parts(self.current_iterations)])


def build(config, ctx) -> AbbIE:
    return AbbIE(config, ctx)
