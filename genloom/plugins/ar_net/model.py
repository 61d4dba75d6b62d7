"""AR-Net's network: lags -> (hidden layers) -> forecast, split into a head and a backbone.

Single layer (the paper's AR-Net): ``forecast = ar_layer(lags)`` with ``ar_layer = Linear(p,
horizon)``, so ``ar_layer.weight[h, i]`` is the coefficient of lag ``p - i`` for step ``h``.
Deep AR-Net: ``ar_layer = Linear(p, hidden)`` in the head's ``embed``, ReLU and further hidden
layers in the backbone, ``Linear(hidden, horizon)`` in the head's ``forward``.
"""

from __future__ import annotations

import torch
from torch import nn

from genloom.core.model import Backbone, Head
from genloom.core.pattern import FULL, AttentionPattern
from genloom.plugins.ar_net import ArNetConfig, ArNetHeadConfig


class ArNetHead(Head):
    """Lags of each variate token in, point forecast out."""

    def __init__(self, order: int, horizon: int, hidden_size: int = 0, bias: bool = True):
        super().__init__()
        self.order, self.horizon, self.hidden_size = order, horizon, hidden_size
        if hidden_size:
            self.ar_layer = nn.Linear(order, hidden_size, bias=bias)
            self.output = nn.Linear(hidden_size, horizon, bias=bias)
        else:
            self.ar_layer = nn.Linear(order, horizon, bias=bias)
            self.output = None
        if not hidden_size:  # the single-layer model starts from "no dependence on the past" (a convex problem)
            nn.init.zeros_(self.ar_layer.weight)
            if self.ar_layer.bias is not None:
                nn.init.zeros_(self.ar_layer.bias)

    def lags(self, ids: torch.Tensor) -> torch.Tensor:
        """The last ``order`` values of each token, oldest first (B, N, p)."""
        if ids.shape[-1] < self.order:
            raise ValueError(f"ar-net needs at least {self.order} values per token (its order), got {ids.shape[-1]}")
        return ids[..., -self.order:].to(self.ar_layer.weight.dtype)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        lags = self.lags(ids)
        return self.ar_layer(lags) if self.hidden_size else lags

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.output(h) if self.hidden_size else self.ar_layer(h)

    def coefficients(self) -> torch.Tensor:
        """First-layer weights with column i belonging to lag i + 1 ((horizon or hidden, p))."""
        return self.ar_layer.weight.flip(-1)

    def loss(self, outputs, targets, mask=None):
        err = (outputs.float() - targets.float()) ** 2
        if mask is None:
            return err.mean()
        mask = mask.to(err.dtype).expand_as(err)
        return (err * mask).sum() / mask.sum().clamp_min(1.0)

    def sample(self, logits, generator=None):
        return logits


class ArNetHidden(Backbone):
    """ReLU, then (hidden_layers - 1) x (Linear + ReLU) on each token; identity without hidden layers."""

    patterns = frozenset({"any"})

    def __init__(self, hidden_layers: int = 0, hidden_size: int = 32):
        super().__init__()
        self.hidden_layers = hidden_layers
        layers: list[nn.Module] = []
        if hidden_layers:
            layers.append(nn.ReLU())
            for _ in range(hidden_layers - 1):
                layers += [nn.Linear(hidden_size, hidden_size), nn.ReLU()]
        self.layers = nn.Sequential(*layers)

    def forward(self, h: torch.Tensor, *, pattern: AttentionPattern = FULL, state=None, valid=None) -> torch.Tensor:
        if state is not None:
            raise ValueError("ar-net forecasts from a whole lookback window; it has no incremental state")
        return self.layers(h)

    def init_state(self, batch_size: int, capacity: int = 256, device=None, dtype=None):
        raise NotImplementedError("ar-net forecasts from a whole lookback window; it has no incremental state")


def build_head(config: ArNetHeadConfig, ctx=None) -> ArNetHead:
    if config.order is None or config.horizon is None or config.hidden_size is None:
        config.bind(ctx)
    return ArNetHead(config.order, config.horizon, config.hidden_size, bias=config.bias)


def build_backbone(config: ArNetConfig, ctx=None) -> ArNetHidden:
    return ArNetHidden(config.hidden_layers, config.hidden_size)
