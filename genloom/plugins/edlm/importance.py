"""Parallel importance sampling (sampling-importance-resampling) and its exact law.

Draw k candidates ``x_1..x_k ~ q``, weight ``w_j = p~(x_j) / q(x_j)`` (p~ unnormalised), pick
``x_J`` with ``P(J = j) = w_j / sum w``. The law of ``x_J`` tends to p as k grows; with ``p~ = q``
(zero energy) it is q exactly for every k.
"""

from __future__ import annotations

import itertools

import torch


def resample(log_weights: torch.Tensor, generator=None) -> torch.Tensor:
    """(B,) indices drawn with probabilities softmax(log_weights) (B, k), by the Gumbel-max trick."""
    u = torch.rand(log_weights.shape, generator=generator, device=log_weights.device, dtype=torch.float64)
    g = -torch.log((-torch.log(u.clamp_min(1e-300))).clamp_min(1e-300))
    return (log_weights.double() + g).argmax(-1)


def resampled_law(log_q: torch.Tensor, log_target: torch.Tensor, k: int) -> torch.Tensor:
    """The exact law (S,) of one SIR draw with k candidates over S enumerable states (float64)."""
    q = torch.exp(log_q.double() - torch.logsumexp(log_q.double(), 0))
    w = torch.exp(log_target.double() - log_q.double())
    S = q.numel()
    law = torch.zeros(S, dtype=torch.float64)
    for combo in itertools.product(range(S), repeat=k):
        idx = torch.tensor(combo)
        prob = q[idx].prod()
        ww = w[idx]
        law.index_add_(0, idx, prob * ww / ww.sum())
    return law
