"""Bipartite matching and optimal transport between predicted and target label sets.

- :func:`hungarian`: the minimum-cost one-to-one assignment (scipy's ``linear_sum_assignment``);
  :func:`brute_force_assignment` is the definition (the minimum over all permutations) for tests.
- :func:`sinkhorn_distance`: the entropy-regularised optimal transport cost between two uniform
  empirical measures with a given cost matrix (Cuturi, 2013), differentiable, in the log domain.
  With equal set sizes and uniform masses the unregularised optimum is the assignment's mean cost,
  so it tends to ``hungarian``'s cost / n as ``epsilon`` -> 0.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch


def hungarian(cost: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, cols) of the minimum-cost assignment of an (n, m) cost matrix (n <= m: every row matched)."""
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(cost.detach().cpu().double().numpy())
    return torch.as_tensor(rows, device=cost.device), torch.as_tensor(cols, device=cost.device)


def brute_force_assignment(cost) -> float:
    """The definition: min over every permutation of the total cost of a square matrix."""
    c = np.asarray(cost.detach().cpu() if torch.is_tensor(cost) else cost, dtype=np.float64)
    n = c.shape[0]
    return min(sum(c[i, p[i]] for i in range(n)) for p in itertools.permutations(range(n)))


def sinkhorn_distance(cost: torch.Tensor, epsilon: float = 0.05, iterations: int = 100) -> torch.Tensor:
    """<P, C> for the Sinkhorn plan P between uniform masses on the rows and columns of ``cost``."""
    n, m = cost.shape
    log_a = torch.full((n,), -float(np.log(n)), dtype=cost.dtype, device=cost.device)
    log_b = torch.full((m,), -float(np.log(m)), dtype=cost.dtype, device=cost.device)
    f = torch.zeros(n, dtype=cost.dtype, device=cost.device)
    g = torch.zeros(m, dtype=cost.dtype, device=cost.device)
    for _ in range(iterations):  # alternate the two marginal constraints (log-domain updates)
        f = epsilon * (log_a - torch.logsumexp((g[None, :] - cost) / epsilon, dim=1))
        g = epsilon * (log_b - torch.logsumexp((f[:, None] - cost) / epsilon, dim=0))
    plan = torch.exp((f[:, None] + g[None, :] - cost) / epsilon)
    return (plan * cost).sum()


def sinkhorn_distances(cost: torch.Tensor, sizes: torch.Tensor, epsilon: float = 0.05, iterations: int = 100) -> torch.Tensor:
    """:func:`sinkhorn_distance` for a batch: ``cost`` (B, K, K) of which row b uses the top-left
    ``sizes[b]`` x ``sizes[b]`` block (uniform masses there, none elsewhere); 0 where a size is 0."""
    B, K, _ = cost.shape
    sizes = sizes.to(cost.device)
    inside = torch.arange(K, device=cost.device)[None, :] < sizes.clamp_min(1)[:, None]  # (B, K)
    log_mass = torch.where(inside, -torch.log(sizes.clamp_min(1).to(cost.dtype))[:, None], torch.full_like(cost[:, 0], -float("inf")))
    cost = cost.masked_fill(~(inside[:, :, None] & inside[:, None, :]), 0.0)
    f = torch.zeros(B, K, dtype=cost.dtype, device=cost.device)
    g = torch.zeros(B, K, dtype=cost.dtype, device=cost.device)
    for _ in range(iterations):
        f = epsilon * (log_mass - torch.logsumexp((g[:, None, :] - cost) / epsilon, dim=2))
        g = epsilon * (log_mass - torch.logsumexp((f[:, :, None] - cost) / epsilon, dim=1))
    plan = torch.exp((f[:, :, None] + g[:, None, :] - cost) / epsilon)
    return (plan * cost).sum((1, 2)) * (sizes > 0).to(cost.dtype)
