"""The inverted (variate) tokenizer: a window (B, lookback, V) becomes V tokens of lookback features.

With ``instance_norm`` each variate of each window is shifted and scaled by its own lookback mean
and standard deviation before it becomes a token, and the forecast is mapped back with the same
statistics (the series-stationarisation step of the authors' code). The token *count* is the
number of variates whatever the lookback; only the token *width* depends on it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from genloom.core.model import Tokenizer
from genloom.plugins.itransformer import VariateTokenizerConfig


@dataclass
class WindowStats:
    """Per-window, per-variate statistics removed by :meth:`VariateTokenizer.encode` (B, 1, V)."""

    mean: torch.Tensor
    std: torch.Tensor


class VariateTokenizer(Tokenizer):
    """``encode(x (B, L, V)) -> (tokens (B, V, L), stats)``; ``decode(outputs (B, V, H), stats) -> (B, H, V)``."""

    series = True  # the series-tokenizer contract of the baseline ``mse`` objective
    vocab_size = 0  # continuous tokens: no discrete vocabulary
    eos_id = None

    def __init__(self, instance_norm: bool = True, eps: float = 1e-5):
        self.instance_norm = instance_norm
        self.eps = eps

    def encode(self, x: torch.Tensor):
        if x.dim() != 3:
            raise ValueError(f"variate tokenizer expects windows (B, lookback, V), got shape {tuple(x.shape)}")
        stats = None
        if self.instance_norm:
            mean = x.mean(dim=1, keepdim=True)
            std = torch.sqrt(x.var(dim=1, keepdim=True, unbiased=False) + self.eps)
            x = (x - mean) / std
            stats = WindowStats(mean, std)
        return x.transpose(1, 2), stats

    def decode(self, outputs: torch.Tensor, stats: WindowStats | None = None) -> torch.Tensor:
        forecast = outputs.transpose(1, 2)
        if stats is not None:
            forecast = forecast * stats.std + stats.mean
        return forecast


def build(config: VariateTokenizerConfig, ctx=None) -> VariateTokenizer:
    return VariateTokenizer(config.instance_norm, config.eps)
