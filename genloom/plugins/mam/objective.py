"""The MaM objective (maximum likelihood): any-order conditionals plus self-consistent marginals.

Per sequence x of the batch, draw a uniform order sigma and a step t in ``0 .. d-1``; let
``S = sigma(1..t)`` be observed and ``i = sigma(t+1)`` the next position. One forward pass over the
stacked states ``[x_S ; x_{S+i} ; x ; empty]`` gives

- the any-order ARM loss of the conditionals, ``d / (d - t) * sum_{j not in S} -log p_phi(x_j | x_S)``
  (an unbiased estimate of the negative bound ``sum_t`` over one step, per sequence);
- the marginalization self-consistency residual
  ``log p_theta(x_S) + log p_phi(x_i | x_S) - log p_theta(x_{S+i})`` (squared, the conditional
  held fixed: the marginals are distilled from the conditionals), and the boundary condition
  ``log p_theta(empty) = 0``;
- optionally ``-log p_theta(x)`` on the data (``likelihood_weight``), the penalty form of
  "maximise the marginal likelihood subject to self-consistency".

If every residual is zero and the boundary holds, chaining the residuals along any order gives
``sum_x p_theta(x) = 1`` and ``p_theta(x_S) = sum_{x_i} p_theta(x_S, x_i)``.
"""

from __future__ import annotations

import torch

from genloom.core.model import Objective
from genloom.core.pattern import FULL
from genloom.toolkit.anyorder import inverse, random_orders

from .head import mam_head, mam_pass


class Mam(Objective):
    pattern = FULL

    def __init__(self, consistency_weight: float, likelihood_weight: float):
        super().__init__()
        self.consistency_weight, self.likelihood_weight = consistency_weight, likelihood_weight

    def loss(self, model, batch):
        mam_head(model)
        ids = batch["ids"]
        B, d = ids.shape
        order = random_orders(B, d, device=ids.device)
        t = torch.randint(0, d, (B,), device=ids.device)
        step = inverse(order)
        observed = step < t[:, None]  # S
        extended = step <= t[:, None]  # S + i
        nxt = order.gather(1, t[:, None])  # i
        rows = torch.cat([ids, ids, ids, ids[:1]])
        seen = torch.cat([observed, extended, torch.ones_like(observed), torch.zeros_like(observed[:1])])
        marginal, conditional = mam_pass(model, rows, seen, FULL)
        log_S, log_Si, log_x, log_empty = marginal[:B], marginal[B : 2 * B], marginal[2 * B : 3 * B], marginal[3 * B]
        token_lp = conditional[:B].gather(2, ids[:, :, None]).squeeze(2)  # (B, d) log p_phi(x_j | x_S)
        ao_nll = (d / (d - t)).to(token_lp.dtype) * -(token_lp * ~observed).sum(1)
        residual = log_S + token_lp.gather(1, nxt).squeeze(1).detach() - log_Si
        consistency = residual.pow(2).mean() + log_empty.pow(2)
        loss = ao_nll.mean() / d + self.consistency_weight * consistency
        if self.likelihood_weight:
            loss = loss - self.likelihood_weight * log_x.mean() / d
        return {"loss": loss, "conditional_nll_per_position": ao_nll.detach().mean() / d, "consistency_mse": consistency.detach(),
                "marginal_nll_per_position": -log_x.detach().mean() / d, "_nats": ao_nll.detach().sum(), "_tokens": torch.tensor(float(B * d))}


def build(config, ctx):
    return Mam(config.consistency_weight, config.likelihood_weight)
