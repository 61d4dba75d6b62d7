"""EntroPE's Adaptive Patch Encoder and global transformer: (B', L, 2) value/boundary tokens -> (B', 1, horizon).

APE: steps ``e_t = W_v x_t + pos_t``; patch k's query is the max over its steps, refined by one
cross-attention over its own steps only (``q + softmax(q K^T / sqrt(d), masked) V``) and a
feed-forward layer: one ``d_model`` vector per patch whatever its length. The global transformer
attends over the patch vectors (padding patches masked); the head maps the last patch's vector and
the patches' mean to the horizon.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from genloom.core.model import Backbone
from genloom.core.pattern import FULL, AttentionPattern
from genloom.plugins.entrope import EntropeConfig
from genloom.plugins.entrope.tokenizer import patch_ids


class AdaptivePatchEncoder(nn.Module):
    """Values (B', L) and boundary flags (B', L) -> patch vectors (B', N, d) and their validity (B', N)."""

    def __init__(self, config: EntropeConfig):
        super().__init__()
        d = config.d_model
        self.value = nn.Linear(1, d)
        self.position = nn.Embedding(config.lookback, d)
        self.query, self.key, self.val = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.ffn = nn.Sequential(nn.Linear(d, config.ffn_hidden), nn.GELU(), nn.Linear(config.ffn_hidden, d))

    def forward(self, values: torch.Tensor, flags: torch.Tensor):
        batch, length = values.shape
        if length > self.position.num_embeddings:
            raise ValueError(f"entrope: windows of {length} steps exceed the configured lookback ({self.position.num_embeddings})")
        ids = patch_ids(flags > 0.5)  # (B', L)
        count = int(ids.max()) + 1
        member = ids[:, None, :] == torch.arange(count, device=values.device)[None, :, None]  # (B', N, L)
        valid = member.any(-1)
        steps = self.value(values[..., None]) + self.position(torch.arange(length, device=values.device))  # (B', L, d)
        pooled = steps[:, None].masked_fill(~member[..., None], float("-inf")).amax(dim=2)  # (B', N, d)
        pooled = torch.where(valid[..., None], pooled, torch.zeros_like(pooled))
        q = self.query(self.norm1(pooled))
        k, v = self.key(steps), self.val(steps)
        scores = (q @ k.transpose(1, 2)) / math.sqrt(q.shape[-1])
        scores = scores.masked_fill(~member, float("-inf"))
        weights = torch.where(valid[..., None], torch.softmax(scores.masked_fill(~valid[..., None], 0.0), dim=-1), torch.zeros_like(scores))
        patches = pooled + weights @ v
        patches = patches + self.ffn(self.norm2(patches))
        return patches * valid[..., None], valid


class Entrope(Backbone):
    """(B', L, 2) value/boundary tokens -> (B', 1, horizon) forecasts in the normalised scale."""

    patterns = frozenset({"full"})

    def __init__(self, config: EntropeConfig):
        super().__init__()
        self.d_model = config.d_model
        self.encoder = AdaptivePatchEncoder(config)
        self.patch_position = nn.Embedding(config.lookback, config.d_model)
        layer = nn.TransformerEncoderLayer(config.d_model, config.n_heads, config.ffn_hidden, config.dropout, batch_first=True, norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, config.n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(config.d_model)
        self.out = nn.Linear(2 * config.d_model, config.horizon)

    def forward(self, h: torch.Tensor, *, pattern: AttentionPattern = FULL, state=None, valid=None) -> torch.Tensor:
        if state is not None:
            raise ValueError("entrope encodes the whole window at once; it keeps no incremental state")
        if h.dim() != 3 or h.shape[-1] != 2:
            raise ValueError(f"entrope expects (B, L, 2) value/boundary tokens from the entropy-patch tokenizer, got {tuple(h.shape)}")
        patches, mask = self.encoder(h[..., 0], h[..., 1])
        z = patches + self.patch_position(torch.arange(patches.shape[1], device=h.device))
        z = self.norm(self.transformer(z, src_key_padding_mask=~mask))
        z = z * mask[..., None]
        last = z[torch.arange(z.shape[0], device=h.device), mask.sum(1) - 1]
        mean = z.sum(1) / mask.sum(1, keepdim=True)
        return self.out(torch.cat([last, mean], dim=-1))[:, None]

    def init_state(self, batch_size: int, capacity: int = 256, device=None, dtype=None):
        raise NotImplementedError("entrope encodes the whole window at once; it keeps no incremental state")


def build(config: EntropeConfig, ctx) -> Entrope:
    if config.lookback is None or config.horizon is None:
        config.bind(ctx)
    ctx.set("d_model", config.d_model)
    return Entrope(config)
