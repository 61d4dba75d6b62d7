"""The ScaleKV policy: dispersion after each scale (``retrieve``), class budgets before the next (``evict``).

- ``retrieve`` (all entries read): dispersion of the layer = attention probability its queries
  (the current scale) put on entries of earlier scales, averaged over heads and queries, per row;
  kept in ``cache.rows[layer]["dispersion"]``.
- ``evict``: the rows' drafter layers are the ``drafters`` layers of largest dispersion; this layer
  keeps at most its class's budget of earlier entries, those the incoming queries attend to most.
"""

from __future__ import annotations

import math

import torch

from genloom.core.cache_policy import CachePolicy


def attention(q: torch.Tensor, k: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(B, Hq, L, S) softmax attention of ``q`` over the keys ``k`` (B, Hkv, S, Dh), invalid keys masked."""
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1).to(q.dtype)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    return torch.softmax(scores.masked_fill(~valid[:, None, None, :], float("-inf")), dim=-1).nan_to_num(0.0)


class ScaleKV(CachePolicy):
    name = "scalekv"

    def __init__(self, budget_refiner=None, budget_drafter=None, drafters=1):
        self.budget_refiner, self.budget_drafter, self.drafters = budget_refiner, budget_drafter, drafters

    def is_drafter(self, cache, layer: int) -> torch.Tensor:
        """(B,) True where ``layer`` is among the rows' ``drafters`` most dispersed layers (last scale)."""
        found = [cache.rows[i].get("dispersion") for i in range(cache.n_layers)]
        if any(d is None for d in found) or self.drafters == 0:
            return torch.zeros(cache.batch_size, dtype=torch.bool, device=cache.device) | (self.drafters >= cache.n_layers)
        disp = torch.stack(found, 1)  # (B, n_layers)
        rank = disp.argsort(dim=1, descending=True).argsort(dim=1)
        return rank[:, layer] < self.drafters

    def evict(self, cache, layer, held, q):
        if (self.budget_refiner is None and self.budget_drafter is None) or q is None:
            return None
        big = held.size
        drafter = self.is_drafter(cache, layer)
        refiner_budget = big if self.budget_refiner is None else self.budget_refiner
        drafter_budget = big if self.budget_drafter is None else self.budget_drafter
        budget = torch.where(drafter, drafter_budget, refiner_budget)  # (B,)
        if bool((held.valid.sum(1) <= budget).all()):
            return None
        importance = attention(q, held.k, held.valid).sum(dim=(1, 2)).masked_fill(~held.valid, -1.0)  # (B, S)
        rank = importance.argsort(dim=1, descending=True).argsort(dim=1)
        return held.valid & (rank < budget[:, None])

    def retrieve(self, cache, layer, held, q):
        if q is None or cache.shares(layer):
            return None
        earlier = torch.arange(held.size, device=held.valid.device)[None] < held.size - cache._last
        probs = attention(q, held.k, held.valid)
        cache.rows[layer] = {**cache.rows[layer], "dispersion": (probs * earlier[:, None, None, :]).sum(-1).mean(dim=(1, 2))}
        return None


def build(config, ctx=None) -> ScaleKV:
    return ScaleKV(config.budget_refiner, config.budget_drafter, config.drafters)
