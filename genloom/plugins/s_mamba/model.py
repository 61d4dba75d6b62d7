"""S-Mamba's encoder: bidirectional Mamba across variate tokens, then a per-token FFN.

The two directional mixers are whatever the registry builds for the configured backbone name
(one causal Mamba block each); this module only arranges them: forward over the variate axis,
and backward by flipping the tokens, mixing, and flipping back.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from genloom.core.model import Backbone
from genloom.core.pattern import CAUSAL, FULL, AttentionPattern
from genloom.plugins.s_mamba import SMambaConfig


class BidirectionalMamba(nn.Module):
    """``forward_mixer(x) + flip(backward_mixer(flip(x)))`` over the token axis (dim 1)."""

    def __init__(self, forward_mixer: nn.Module, backward_mixer: nn.Module):
        super().__init__()
        self.forward_mixer = forward_mixer
        self.backward_mixer = backward_mixer

    def forward(self, x: torch.Tensor, valid=None) -> torch.Tensor:
        if valid is not None and not bool(valid.all()):
            raise ValueError("s-mamba mixes every variate token; padded (invalid) tokens are not supported")
        ahead = self.forward_mixer(x, pattern=CAUSAL)
        behind = self.backward_mixer(x.flip(1), pattern=CAUSAL).flip(1)
        return ahead + behind


class SMambaLayer(nn.Module):
    """U = norm1(U + dropout(BiMamba(U))); U = norm2(U + dropout(FFN(U)))."""

    def __init__(self, mixer: BidirectionalMamba, d_model: int, d_ff: int, dropout: float):
        super().__init__()
        self.mixer = mixer
        self.norm1 = nn.LayerNorm(d_model)
        self.ffn = nn.Sequential(nn.Linear(d_model, d_ff), nn.GELU(), nn.Dropout(dropout), nn.Linear(d_ff, d_model))
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, valid=None) -> torch.Tensor:
        x = self.norm1(x + self.dropout(self.mixer(x, valid)))
        return self.norm2(x + self.dropout(self.ffn(x)))


class SMamba(Backbone):
    """Variate tokens (B, V, d_model) -> (B, V, d_model); every token sees every other one."""

    patterns = frozenset({"full"})

    def __init__(self, layers: list[SMambaLayer], d_model: int):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.norm = nn.LayerNorm(d_model)
        self.d_model = d_model

    def forward(self, h: torch.Tensor, *, pattern: AttentionPattern = FULL, state=None, valid=None) -> torch.Tensor:
        if state is not None:
            raise ValueError("s-mamba mixes all variate tokens in both directions; it has no incremental state")
        if pattern.kind != "full":
            raise ValueError(f"s-mamba's bidirectional layer lets every variate see every other one ('full' pattern), got '{pattern.kind}'")
        for layer in self.layers:
            h = layer(h, valid)
        return self.norm(h)

    def init_state(self, batch_size: int, capacity: int = 256, device=None, dtype=None):
        raise NotImplementedError("s-mamba mixes all variate tokens in both directions; it has no incremental state")


def mixer_node(config: SMambaConfig, registry=None) -> dict:
    """Registry node of one directional mixer: one block of config.mamba at width d_model."""
    node = {"name": config.mamba, "d_model": config.d_model, "n_layers": 1, **config.mamba_options}
    if registry is not None and "final_norm" not in node:
        record = registry.get("backbone", config.mamba)
        if "final_norm" in {f.name for f in dataclasses.fields(record.config)}:
            node["final_norm"] = False  # the S-Mamba layer normalises after adding both directions
    return node


def build(config: SMambaConfig, ctx) -> SMamba:
    node = mixer_node(config, ctx.registry)
    where = ctx.current or "backbone"
    layers = []
    for i in range(config.n_layers):
        forward_mixer = ctx.build("backbone", dict(node), path=f"{where}.layers[{i}].forward")
        backward_mixer = ctx.build("backbone", dict(node), path=f"{where}.layers[{i}].backward")
        layers.append(SMambaLayer(BidirectionalMamba(forward_mixer, backward_mixer), config.d_model, config.d_ff or 2 * config.d_model, config.dropout))
    ctx.set("d_model", config.d_model)
    return SMamba(layers, config.d_model)
