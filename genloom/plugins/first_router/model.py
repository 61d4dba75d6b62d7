"""The FiRST backbone: a registered backbone with per-layer routers read on the prompt.

Decoding: :meth:`FirstRouter.init_state` gives the base's cache a router (``KVCache.router``); the
base asks it before each layer during the prefill (``KVCache.route``) and the decisions stay fixed.
Training (no state): forward hooks on the base's blocks mix each layer softly with its router's
probability; the probabilities of the last forward are kept for the objective (``last_gates``).
"""

from __future__ import annotations

import torch
from torch import nn

from genloom.core.errors import ConfigError
from genloom.core.model import Backbone
from genloom.core.pattern import CAUSAL
from genloom.toolkit.kv_sharing import node


def prompt_mean(h: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """(B, D) mean of ``h`` (B, L, D) over the real tokens."""
    if valid is None:
        return h.mean(1)
    w = valid.to(h.dtype)[..., None]
    return (h * w).sum(1) / w.sum(1).clamp_min(1.0)


def running_mean(h: torch.Tensor) -> torch.Tensor:
    """(B, L, D): position t holds the mean of h[:, :t+1] (a causal summary for training)."""
    steps = torch.arange(1, h.shape[1] + 1, device=h.device, dtype=h.dtype)[None, :, None]
    return h.cumsum(1) / steps


class FirstRouter(Backbone):
    def __init__(self, base: nn.Module, d_model: int, *, threshold: float, router_bias: float, freeze_base: bool):
        super().__init__()
        blocks = getattr(base, "layers", None)
        if not isinstance(blocks, nn.ModuleList):
            raise ConfigError(f"first-router needs a base backbone whose 'layers' are its residual blocks (e.g. transformer), got {type(base).__name__}",
                              path="backbone.base")
        if not hasattr(base.init_state(1, 1), "route"):
            raise ConfigError(f"first-router needs a base whose state routes layers (the core KVCache), got {type(base).__name__}'s "
                              f"{type(base.init_state(1, 1)).__name__}", path="backbone.base")
        self.base = base
        self.patterns = frozenset(getattr(base, "patterns", {"causal"}))
        self.static_cache = False
        self.threshold = threshold
        self.routers = nn.ModuleList(nn.Linear(d_model, 1) for _ in blocks)
        for r in self.routers:
            nn.init.zeros_(r.weight)
            nn.init.constant_(r.bias, router_bias)
        if freeze_base:
            for p in base.parameters():
                p.requires_grad_(False)
        self.last_gates: list[torch.Tensor] = []
        """(B, L) router probabilities of every layer in the last training forward (the objective reads them)."""
        for i, block in enumerate(blocks):
            block.register_forward_hook(self._soft_gate(i), with_kwargs=True)

    def probability(self, layer: int, summary: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.routers[layer](summary).squeeze(-1))

    def route(self, layer: int, h: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        """The router of the core's prompt-time layer routing: True where a row skips ``layer``."""
        return self.probability(layer, prompt_mean(h, valid)) < self.threshold

    def _soft_gate(self, layer: int):
        def hook(module, args, kwargs, output):
            if not self._gating:
                return output
            h = args[0] if args else kwargs["x"]
            p = self.probability(layer, running_mean(h))  # (B, L): causal, from the tokens so far
            self.last_gates.append(p)
            return h + p[..., None] * (output - h)

        return hook

    def forward(self, h, *, pattern=CAUSAL, state=None, valid=None):
        self._gating = state is None and self.training
        self.last_gates = []
        try:
            return self.base(h, pattern=pattern, state=state, valid=valid)
        finally:
            self._gating = False

    def init_state(self, batch_size: int, capacity: int = 256, device=None, dtype=None):
        state = self.base.init_state(batch_size, capacity, device=device, dtype=dtype)
        if not hasattr(state, "route"):
            raise ConfigError(f"first-router needs a base whose state routes layers (the core KVCache), got {type(state).__name__}", path="backbone.base")
        state.router = self.route
        return state

    _gating = False


def build(config, ctx) -> FirstRouter:
    base = ctx.build("backbone", node(config.base), path="backbone.base")
    return FirstRouter(base, int(ctx.d_model), threshold=config.threshold, router_bias=config.router_bias, freeze_base=config.freeze_base)
