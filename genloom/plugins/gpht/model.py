"""GPHT's backbone: hierarchical stages of causal transformers over patch values (B', T, P) -> next patches (B', T, P).

Output position t is the prediction of patch t + 1. Stage s with pooling factor r predicts patch
t from the blocks of r patches that end before t's block; its input is the residual of the
patches minus the earlier stages' predictions of them.
"""

from __future__ import annotations

import torch
from torch import nn

from genloom.core.model import Backbone
from genloom.core.pattern import FULL, AttentionPattern
from genloom.plugins.gpht import GphtConfig


def causal_mask(n: int, device=None) -> torch.Tensor:
    """Boolean (n, n) mask, True where attention is *not* allowed (a later position)."""
    return torch.triu(torch.ones(n, n, dtype=torch.bool, device=device), diagonal=1)


class Stage(nn.Module):
    """One scale: embed patches, max-pool blocks of ``pool`` patches, causal transformer, project to the next block's patches."""

    def __init__(self, config: GphtConfig, pool: int):
        super().__init__()
        self.pool, self.patch_len = pool, config.patch_len
        self.embedding = nn.Linear(config.patch_len, config.d_model)
        self.position = nn.Embedding(config.max_patches, config.d_model)
        layer = nn.TransformerEncoderLayer(config.d_model, config.n_heads, config.ffn_hidden, config.dropout, batch_first=True, norm_first=True)
        self.layers = nn.TransformerEncoder(layer, config.layers_per_stage, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(config.d_model)
        self.projection = nn.Linear(config.d_model, pool * config.patch_len)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """Patches (B', T, P) -> predictions (B', T + 1, P) of patches 0..T (zero where no whole block precedes)."""
        batch, length, _ = patches.shape
        blocks = length // self.pool
        prediction = patches.new_zeros(batch, (blocks + 1) * self.pool, self.patch_len)
        if blocks > 0:
            h = self.embedding(patches[:, :blocks * self.pool]).reshape(batch, blocks, self.pool, -1).amax(dim=2)
            h = h + self.position(torch.arange(blocks, device=patches.device))
            h = self.norm(self.layers(h, mask=causal_mask(blocks, patches.device)))
            nxt = self.projection(h).reshape(batch, blocks * self.pool, self.patch_len)  # block j -> the patches of block j + 1
            prediction = torch.cat([patches.new_zeros(batch, self.pool, self.patch_len), nxt], dim=1)
        return prediction[:, :length + 1]


class Gpht(Backbone):
    """Patch values (B', T, P) -> next-patch predictions (B', T, P): the sum of the stages' predictions."""

    patterns = frozenset({"causal", "full"})

    def __init__(self, config: GphtConfig):
        super().__init__()
        self.config = config
        self.d_model = config.d_model
        self.stages = nn.ModuleList(Stage(config, pool) for pool in config.stages)

    def stage_predictions(self, patches: torch.Tensor) -> list[torch.Tensor]:
        """Each stage's predictions (B', T + 1, P) of patches 0..T; stage s reads x minus the earlier stages' sum."""
        if patches.shape[1] > self.config.max_patches:
            raise ValueError(f"gpht: {patches.shape[1]} patches exceed max_patches ({self.config.max_patches})")
        total = torch.zeros_like(patches[:, :1]).expand(-1, patches.shape[1] + 1, -1)
        out = []
        for stage in self.stages:
            prediction = stage(patches - total[:, :-1])
            out.append(prediction)
            total = total + prediction
        return out

    def forward(self, h: torch.Tensor, *, pattern: AttentionPattern = FULL, state=None, valid=None) -> torch.Tensor:
        if state is not None:
            raise ValueError("gpht recomputes its stages over the window; it keeps no incremental state")
        return torch.stack(self.stage_predictions(h)).sum(0)[:, 1:]

    def init_state(self, batch_size: int, capacity: int = 256, device=None, dtype=None):
        raise NotImplementedError("gpht recomputes its stages over the window; it keeps no incremental state")


def build(config: GphtConfig, ctx) -> Gpht:
    if config.patch_len is None:
        config.bind(ctx)
    ctx.set("d_model", config.d_model)
    return Gpht(config)
