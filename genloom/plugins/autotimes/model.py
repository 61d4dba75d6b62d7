"""AutoTimes' backbone: segments (B', N, S) -> embedding MLP (+ position text) -> frozen LM -> projection MLP -> next segments (B', N, S)."""

from __future__ import annotations

import torch
from torch import nn

from genloom.core.errors import ConfigError
from genloom.core.model import Backbone
from genloom.core.pattern import FULL, AttentionPattern
from genloom.plugins.autotimes import AutoTimesConfig
from genloom.toolkit.forecasting_patches import FrozenLM, load_frozen_lm


def mlp(n_in: int, hidden: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.GELU(), nn.Linear(hidden, n_out))


class AutoTimes(Backbone):
    """Output position i is the prediction of segment i + 1 (the frozen LM is causal)."""

    patterns = frozenset({"causal", "full"})

    def __init__(self, config: AutoTimesConfig, lm: FrozenLM):
        super().__init__()
        self.lm = lm
        self.d_model = lm.d_model
        self.embedding = mlp(config.segment_len, config.hidden, lm.d_model)
        self.projection = mlp(lm.d_model, config.hidden, config.segment_len)
        self.max_segments = config.max_segments
        text = lm.embed_text([f"segment {i}" for i in range(config.max_segments)]) if config.position_text else torch.zeros(config.max_segments, lm.d_model)
        self.register_buffer("position_text", text)

    def forward(self, h: torch.Tensor, *, pattern: AttentionPattern = FULL, state=None, valid=None) -> torch.Tensor:
        if state is not None:
            raise ValueError("autotimes recomputes the window; it keeps no incremental state")
        if h.shape[1] > self.max_segments:
            raise ValueError(f"autotimes: {h.shape[1]} segments exceed max_segments ({self.max_segments})")
        tokens = self.embedding(h) + self.position_text[:h.shape[1]].to(h.dtype)
        return self.projection(self.lm(tokens))

    def init_state(self, batch_size: int, capacity: int = 256, device=None, dtype=None):
        raise NotImplementedError("autotimes recomputes the window; it keeps no incremental state")


def build(config: AutoTimesConfig, ctx) -> AutoTimes:
    if config.segment_len is None:
        config.bind(ctx)
    if not config.lm_run:
        raise ConfigError("autotimes needs backbone.lm_run: the run directory of a genloom language model to keep frozen "
                          "(train one with `genloom train configs/frozen-lm.yaml --run-dir runs/frozen-lm`)", path="backbone.lm_run")
    lm = load_frozen_lm(config.lm_run)
    ctx.set("d_model", lm.d_model)
    return AutoTimes(config, lm)
