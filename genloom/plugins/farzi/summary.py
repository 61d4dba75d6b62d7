"""Farzi's data summary and the tiny autoregressive model trained on it in the inner loop.

The summary is ``softmax(latent @ basis)``: ``latent`` (n, L, k) per synthetic sequence and position,
``basis`` (k, V) shared by all tokens, so every row is a distribution over the V tokens (it lies on
the simplex) and the summary has ``n L k + k V`` parameters instead of ``n L V``.

The inner model is an order-``p`` linear autoregression over (soft) one-hot tokens, with its
parameters in one flat vector so that Adam's reverse mode can treat it functionally:
``logits_t = b + Σ_{j=1..p} x_{t-j} A_j`` and the loss is the soft next-token cross-entropy
``-mean_t Σ_v x_t[v] log softmax(logits_t)[v]``.
"""

from __future__ import annotations

import torch
from torch import nn


class FarziSummary(nn.Module):
    """``n`` synthetic sequences of ``length`` token distributions over ``vocab`` tokens, factorised through a ``rank``-dim latent space."""

    def __init__(self, n: int, length: int, vocab: int, rank: int, generator: torch.Generator | None = None):
        super().__init__()
        self.latent = nn.Parameter(torch.randn(n, length, rank, generator=generator))
        self.basis = nn.Parameter(torch.randn(rank, vocab, generator=generator) / rank ** 0.5)

    def data(self) -> torch.Tensor:
        """(n, length, vocab): each row a distribution over the tokens."""
        return torch.softmax(self.latent @ self.basis, dim=-1)


def ar_parameter_count(vocab: int, order: int) -> int:
    return order * vocab * vocab + vocab


def ar_init(vocab: int, order: int, generator: torch.Generator | None = None, dtype=torch.float32) -> torch.Tensor:
    return 0.01 * torch.randn(ar_parameter_count(vocab, order), generator=generator, dtype=dtype)


def ar_logits(theta: torch.Tensor, x: torch.Tensor, order: int) -> torch.Tensor:
    """Logits (n, L-1, V) of tokens 1..L-1 from the ``order`` tokens before each (zeros before the start)."""
    vocab = x.shape[-1]
    weights = theta[:order * vocab * vocab].reshape(order, vocab, vocab)
    bias = theta[order * vocab * vocab:]
    logits = bias.expand(x.shape[0], x.shape[1] - 1, vocab)
    for j in range(1, order + 1):
        previous = torch.cat([x.new_zeros(x.shape[0], j - 1, vocab), x[:, :x.shape[1] - j]], dim=1)  # x_{t-j} for t = 1..L-1
        logits = logits + previous @ weights[j - 1]
    return logits


def ar_loss(theta: torch.Tensor, x: torch.Tensor, order: int) -> torch.Tensor:
    """Soft next-token cross-entropy of the order-p model on (soft) one-hot sequences x (n, L, V)."""
    logp = torch.log_softmax(ar_logits(theta, x, order), dim=-1)
    return -(x[:, 1:] * logp).sum(-1).mean()
