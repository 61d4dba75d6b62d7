"""TEMPO's backbone: patches (B', N, P) of the normalised window -> (B', 1, horizon).

The window is rebuilt from the patches, decomposed into trend + seasonal + residual, and each part
goes through its patch embedding, the prompt pool, the frozen LM and its own horizon projection;
the three forecasts are summed.
"""

from __future__ import annotations

import torch
from torch import nn

from genloom.core.errors import ConfigError
from genloom.core.model import Backbone
from genloom.core.pattern import FULL, AttentionPattern
from genloom.plugins.tempo import TempoConfig
from genloom.plugins.tempo.prompt_pool import PromptPool
from genloom.toolkit.forecasting_patches import FrozenLM, decompose, load_frozen_lm

PARTS = ("trend", "seasonal", "residual")


class Tempo(Backbone):
    patterns = frozenset({"full", "causal"})

    def __init__(self, config: TempoConfig, lm: FrozenLM):
        super().__init__()
        if config.lookback % config.patch_len:
            raise ValueError(f"tempo: patch_len ({config.patch_len}) must divide the lookback ({config.lookback})")
        self.config = config
        self.lm = lm
        self.d_model = d = lm.d_model
        patches = config.lookback // config.patch_len
        self.embeddings = nn.ModuleList(nn.Linear(config.patch_len, d) for _ in PARTS)
        self.pool = PromptPool(config.pool_size, config.prompt_len, d, config.top_k)
        self.projections = nn.ModuleList(nn.Linear(patches * d, config.horizon) for _ in PARTS)
        self.last_matching_loss = None
        self.last_selection = None

    def parts(self, h: torch.Tensor):
        """The window (B', L) rebuilt from patches (B', N, P), decomposed: (trend, seasonal, residual), each (B', L)."""
        window = h.reshape(h.shape[0], -1, 1)
        return tuple(part[..., 0] for part in decompose(window, self.config.period, self.config.trend_kernel))

    def forward(self, h: torch.Tensor, *, pattern: AttentionPattern = FULL, state=None, valid=None) -> torch.Tensor:
        if state is not None:
            raise ValueError("tempo forecasts the whole window at once; it keeps no incremental state")
        batch, patches, patch_len = h.shape
        forecast, matching, selection = 0.0, 0.0, []
        for part, embedding, projection in zip(self.parts(h), self.embeddings, self.projections):
            tokens = embedding(part.reshape(batch, patches, patch_len))
            prompts, indices, loss = self.pool(tokens.mean(dim=1).detach())
            out = self.lm(torch.cat([prompts.to(tokens.dtype), tokens], dim=1))[:, -patches:]
            forecast = forecast + projection(out.flatten(1))
            matching = matching + loss / len(PARTS)
            selection.append(indices)
        self.last_matching_loss, self.last_selection = matching, selection
        return forecast[:, None]

    def init_state(self, batch_size: int, capacity: int = 256, device=None, dtype=None):
        raise NotImplementedError("tempo forecasts the whole window at once; it keeps no incremental state")


def build(config: TempoConfig, ctx) -> Tempo:
    if config.patch_len is None or config.lookback is None or config.horizon is None or config.period is None:
        config.bind(ctx)
    if not config.lm_run:
        raise ConfigError("tempo needs backbone.lm_run: the run directory of a genloom language model to keep frozen "
                          "(train one with `genloom train configs/frozen-lm.yaml --run-dir runs/frozen-lm`)", path="backbone.lm_run")
    lm = load_frozen_lm(config.lm_run)
    ctx.set("d_model", lm.d_model)
    return Tempo(config, lm)
