"""The gated linear recurrence in parallel (attention-like) form: one masked decay matrix.

Unrolling the recurrence, with ``G[t] = g[1] + ... + g[t]`` the cumulative log decay::

    y[t] = sum_{s <= t} (q[t] * exp(G[t] - G[s])) . k[s]  v[s]   +   (q[t] * exp(G[t])) h[0]

i.e. ``y = ((Q K^T) * D) V`` with the decay mask ``D[t, s] = exp(G[t] - G[s])`` for s <= t, 0 after
(RetNet's parallel retention, GateLoop's surrogate attention). For a per-channel decay the mask has
a key-channel axis, (L, L, K). ``G[t] - G[s]`` is formed only for s <= t (the rest is set to 0
*before* the exp and masked after), so no exp ever overflows and gradients stay finite.
O(L^2) work and memory: the form for short sequences and for training on parallel hardware.
"""

from __future__ import annotations

import torch

from genloom.kernels.linear_recurrence.reference import prepare


def cumulative_log_decay(g: torch.Tensor) -> torch.Tensor:
    """``G = cumsum(g)`` in double precision (float64/complex128): a float32 cumulative sum of
    thousands of steps loses the digits that ``G[t] - G[s]`` needs. Callers take ``exp`` of
    differences (exponents <= 0) and cast the results back to the compute dtype."""
    wide = torch.complex128 if g.is_complex() else torch.float64
    return g.to(wide).cumsum(2)


def decay_mask(G_t: torch.Tensor, G_s: torch.Tensor, causal: torch.Tensor) -> torch.Tensor:
    """``exp(G_t[:, :, t] - G_s[:, :, s])`` where ``causal[t, s]``, else 0: (B, H, Lt, Ls, K_g)."""
    diff = G_t[:, :, :, None] - G_s[:, :, None, :]  # exact enough: G was accumulated in double
    mask = causal[None, None, :, :, None]
    return torch.where(mask, torch.exp(torch.where(mask, diff, torch.zeros_like(diff))), torch.zeros_like(diff))


def linear_recurrence_parallel(q, k, v, g, initial_state=None):
    """Parallel form. Same arguments and results as the reference."""
    q, k, v, g, state = prepare(q, k, v, g, initial_state)
    L = q.shape[2]
    G = cumulative_log_decay(g)
    causal = torch.ones(L, L, dtype=torch.bool, device=q.device).tril()
    D = decay_mask(G, G, causal).to(q.dtype)  # (B, H, L, L, K_g)
    if g.shape[-1] == 1:
        scores = torch.einsum("bhtk,bhsk->bhts", q, k) * D[..., 0]
    else:
        scores = torch.einsum("bhtk,bhsk,bhtsk->bhts", q, k, D)
    y = torch.einsum("bhts,bhsv->bhtv", scores, v) + torch.einsum("bhtk,bhkv->bhtv", q * torch.exp(G).to(q.dtype), state)
    if L == 0:
        return y, state
    to_end = torch.exp(G[:, :, -1:] - G).to(q.dtype)  # decay from each step to the end, exponents <= 0
    final = torch.exp(G[:, :, -1, :, None]).to(q.dtype) * state + torch.einsum("bhsk,bhsv->bhkv", k * to_end, v)
    return y, final
