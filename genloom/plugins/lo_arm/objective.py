"""The LO-ARM objective: the variational bound on log p(x) with a learnt order posterior.

The generative model is ``p(x, z) = prod_t p(z_t | s_t) p(x_{z_t} | s_t)``: at state ``s_t`` (the
positions ``z_<t`` revealed) the order policy picks the next position and the classifier its token.
``log p(x) = log sum_z p(x, z)`` sums over every order. A variational order policy
``q(z_t | s_t, x)``, which also sees the true tokens of the masked positions, gives the bound

    log p(x) >= ELBO(x) = E_{z ~ q}[ sum_t log p(z_t | s_t) + log p(x_{z_t} | s_t) - log q(z_t | s_t, x) ],

with equality when ``q(z | x) = p(z | x)``; the gap is ``KL(q(z | x) || p(z | x))``.

Training: ``samples`` trajectories per sequence are drawn from q (one posterior pass per step,
without gradients), then every step of every trajectory is scored in one generator pass and one
posterior pass (the states stacked as a batch). The generator gets the exact gradient of the
ELBO; the posterior gets the score-function (REINFORCE) gradient with a leave-one-out baseline
over the ``samples`` trajectories of the same sequence, plus the direct gradient of its entropy
term. The loss value reported is -ELBO per generated position.

:func:`exact_log_likelihood` and :func:`exact_elbo` enumerate every order (tiny inputs only).
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

from genloom.core.errors import ConfigError
from genloom.core.model import Objective
from genloom.core.pattern import FULL

from .head import wide, generator_step, lo_arm_head, order_log_probs


class OrderPosterior(nn.Module):
    """q(z_t | s_t, x): a backbone over the true tokens plus a revealed/masked flag, one logit per position."""

    def __init__(self, backbone: nn.Module, vocab_size: int, d_model: int, init_std: float = 0.02):
        super().__init__()
        self.backbone = backbone
        self.embed_tokens = nn.Embedding(vocab_size, d_model)
        self.flag = nn.Embedding(2, d_model)
        self.out = nn.Linear(d_model, 1)
        for w in (self.embed_tokens.weight, self.flag.weight, self.out.weight):
            nn.init.normal_(w, std=init_std)
        nn.init.zeros_(self.out.bias)

    def forward(self, ids: torch.Tensor, revealed: torch.Tensor) -> torch.Tensor:
        """(B, N) log q(z = i | state, x)."""
        h = self.backbone(self.embed_tokens(ids) + self.flag(revealed.long()), pattern=FULL)
        return order_log_probs(wide(self.out(h).squeeze(-1)), revealed)


def initially_revealed(ids: torch.Tensor, source_length: int | None) -> torch.Tensor:
    """(B, N) the positions given before generation starts: the source block, else none."""
    revealed = torch.zeros_like(ids, dtype=torch.bool)
    if source_length:
        revealed[:, :source_length] = True
    return revealed


def states_along(order: torch.Tensor, revealed0: torch.Tensor) -> torch.Tensor:
    """(B, T, N) the revealed set before each step of ``order`` (B, T), starting from ``revealed0``."""
    B, T = order.shape
    chosen = torch.zeros(B, T, revealed0.shape[1], dtype=torch.bool, device=order.device)
    chosen.scatter_(2, order[:, :, None], True)
    before = chosen.cumsum(1) - chosen.long()  # positions chosen at earlier steps
    return revealed0[:, None, :] | before.bool()


def step_terms(model, posterior, ids, revealed0, order):
    """Per step of the trajectories ``order`` (B, T): (log p(z_t|s_t), log p(x_{z_t}|s_t), log q(z_t|s_t,x)), each (B, T)."""
    B, T = order.shape
    N = ids.shape[1]
    states = states_along(order, revealed0).reshape(B * T, N)
    flat_ids = ids[:, None, :].expand(B, T, N).reshape(B * T, N)
    token_lp, order_lp = generator_step(model, flat_ids, states, FULL)
    z = order.reshape(B * T, 1)
    lp_z = order_lp.gather(1, z).view(B, T)
    lp_x = token_lp.gather(1, z[:, :, None].expand(-1, 1, token_lp.shape[-1])).squeeze(1).gather(1, flat_ids.gather(1, z)).view(B, T)
    lq = posterior(flat_ids, states).gather(1, z).view(B, T) if posterior is not None else torch.zeros_like(lp_z)
    return lp_z, lp_x, lq


@torch.no_grad()
def sample_orders(posterior, ids, revealed0, generator=None) -> torch.Tensor:
    """(B, T) one trajectory per row drawn from q, T = the positions not revealed at the start (equal per row)."""
    revealed = revealed0.clone()
    T = int((~revealed0).sum(1).max())
    steps = []
    for _ in range(T):
        probs = posterior(ids, revealed).exp()
        z = torch.multinomial(probs, 1, generator=generator)
        steps.append(z)
        revealed.scatter_(1, z, True)
    return torch.cat(steps, 1)


def all_orders(revealed0_row: torch.Tensor) -> torch.Tensor:
    """(T!, T) every order of the positions not revealed in one row."""
    free = (~revealed0_row).nonzero().flatten().tolist()
    return torch.tensor(list(itertools.permutations(free)), dtype=torch.long, device=revealed0_row.device)


def _enumerate(model, posterior, ids, revealed0):
    """Per row: (log p(x, z), log q(z | x)) for every order z, each (B, T!)."""
    orders = all_orders(revealed0[0])
    K = orders.shape[0]
    B = ids.shape[0]
    rep = ids.repeat_interleave(K, 0)
    lp_z, lp_x, lq = step_terms(model, posterior, rep, revealed0.repeat_interleave(K, 0), orders.repeat(B, 1))
    return (lp_z + lp_x).sum(1).view(B, K), lq.sum(1).view(B, K)


@torch.no_grad()
def exact_log_likelihood(model, ids: torch.Tensor, revealed0: torch.Tensor) -> torch.Tensor:
    """(B,) log p(x) = log sum over every order of p(x, z) (rows share their revealed positions)."""
    joint, _ = _enumerate(model, None, ids, revealed0)
    return joint.logsumexp(1)


@torch.no_grad()
def exact_elbo(model, posterior, ids: torch.Tensor, revealed0: torch.Tensor) -> torch.Tensor:
    """(B,) the bound with its expectation over q computed exactly: sum_z q(z|x) (log p(x,z) - log q(z|x))."""
    joint, lq = _enumerate(model, posterior, ids, revealed0)
    return (lq.exp() * (joint - lq)).sum(1)


class LoArm(Objective):
    pattern = FULL

    def __init__(self, posterior: OrderPosterior, samples: int, source_length: int | None):
        super().__init__()
        self.posterior, self.samples, self.source_length = posterior, samples, source_length

    def loss(self, model, batch):
        lo_arm_head(model)
        ids = batch["ids"].repeat_interleave(self.samples, 0)
        revealed0 = initially_revealed(ids, self.source_length)
        order = sample_orders(self.posterior, ids, revealed0)
        lp_z, lp_x, lq = step_terms(model, self.posterior, ids, revealed0, order)
        elbo = (lp_z + lp_x - lq).sum(1)  # (B * samples,)
        per_seq = elbo.detach().view(-1, self.samples)
        baseline = (per_seq.sum(1, keepdim=True) - per_seq) / max(self.samples - 1, 1) if self.samples > 1 else torch.zeros_like(per_seq)
        advantage = (per_seq - baseline).flatten()
        surrogate = -(elbo + advantage * lq.sum(1)).mean()
        T = order.shape[1]
        nelbo = -elbo.detach().mean() / T
        loss = nelbo + (surrogate - surrogate.detach()) / T  # the value is -ELBO per position, the gradient the estimator's
        return {"loss": loss, "nelbo_per_position": nelbo, "order_entropy_per_position": -lq.detach().sum(1).mean() / T,
                "_nats": -elbo.detach().sum() / self.samples, "_tokens": torch.tensor(float(T * batch["ids"].shape[0]))}


def build(config, ctx):
    d_model = ctx.d_model
    backbone = ctx.build("backbone", config.posterior, path="objective.posterior")
    posterior_width = ctx.d_model
    ctx.set("d_model", d_model)  # the posterior's width is its own; later components see the model's
    if not backbone.supports(FULL):
        raise ConfigError(f"the order posterior's backbone must serve the full attention pattern ({type(backbone).__name__} does not)", path="objective.posterior")
    source_length = ctx.get("source_length")
    return LoArm(OrderPosterior(backbone, ctx.vocab_size, posterior_width), config.samples, int(source_length) if source_length else None)
