"""Acceptance rules of speculative verification, for discrete and continuous distributions.

A draft ``x ~ q`` is accepted for the target ``p`` with probability ``min(1, p(x) / q(x))``; on
rejection a replacement is drawn from the residual ``norm(max(0, p - q))``. The result is
distributed exactly as ``p`` and the acceptance probability is ``1 - TV(p, q)``. The rule needs
only three things of a distribution, so it is written once over the :class:`Density` protocol:

- ``log_prob(x)``: log density (continuous) or log probability mass (discrete) of ``x``;
- ``sample(generator)``: one draw per row of the batch;
- optionally ``residual(q, generator)``: an exact draw from ``norm(max(0, p - q))`` (a categorical
  distribution normalises the vector); without it :func:`residual_sample` draws ``y ~ p`` and keeps
  it with probability ``max(0, 1 - q(y) / p(y))``, which samples the residual exactly for any pair
  of densities (the kept mass is ``(p - q)+``), in ``1 / TV(p, q)`` draws on average.

:class:`Categorical` expresses the discrete rule of Leviathan et al. (2023) in these terms;
:class:`GaussianMixture1D` is a batch of 1-D Gaussian mixtures (a continuous head's output).

Acceptance rules for categorical distributions (a pluggable piece of verification). A rule gives
the probability ``a(x)`` of accepting a draft ``x ~ q`` for the target ``p``; on rejection the token
is drawn from the residual ``norm(max(0, p - q))``. :class:`ExactAcceptance` is ``min(1, p(x) / q(x))``
(the output law is ``p``); :class:`RelaxedAcceptance` is LANTERN's relaxation (arXiv 2410.03355)
``min(1, p(A(x)) / q(x))``, where ``A(x)`` is a latent-space neighbourhood of ``x`` limited by a
total-variation budget ``delta`` (its docstring states the limit and the bound it gives).
:func:`verify_chain` verifies a block of drafts with any rule, :func:`output_law` gives the exact
one-position output law of a rule (by enumerating the draft), :func:`total_variation` the distance.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch


class Density(Protocol):
    """A batch of distributions, one per row: what an acceptance rule needs of it."""

    def log_prob(self, x: torch.Tensor) -> torch.Tensor: ...

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor: ...


def acceptance_ratio(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """``min(1, p / q)`` from log values; a draft of zero draft probability counts as accepted."""
    ratio = torch.exp((log_p - log_q).clamp(max=0.0))
    return torch.where(torch.isneginf(log_q), torch.ones_like(ratio), ratio)


def _uniform(shape, like: torch.Tensor, generator) -> torch.Tensor:
    dtype = like.dtype if like.dtype.is_floating_point else torch.float64
    return torch.rand(shape, generator=generator, dtype=dtype, device=like.device)


def residual_sample(p: Density, q: Density, generator: torch.Generator | None = None, max_tries: int = 10_000) -> torch.Tensor:
    """One draw per row from ``norm(max(0, p - q))``.

    Uses ``p.residual(q, generator)`` when ``p`` has one; otherwise rejection sampling from ``p``:
    ``y ~ p`` is kept with probability ``max(0, 1 - q(y) / p(y))``. Raises ``RuntimeError`` if a
    row keeps nothing in ``max_tries`` rounds (``p`` and ``q`` then agree almost everywhere and the
    residual is never needed in practice).
    """
    if hasattr(p, "residual"):
        return p.residual(q, generator)
    out = done = None
    for _ in range(max_tries):
        y = p.sample(generator)
        keep = _uniform(y.shape, y, generator) < (1 - torch.exp(q.log_prob(y) - p.log_prob(y))).clamp(min=0.0)
        if out is None:
            out, done = y.clone(), keep.clone()
        else:
            fill = keep & ~done
            out = torch.where(fill, y, out)
            done |= keep
        if bool(done.all()):
            return out
    raise RuntimeError(f"residual_sample: {int((~done).sum())} row(s) found no residual mass in {max_tries} draws (p and q nearly equal)")


def speculative_accept(p: Density, q: Density, draft: torch.Tensor, generator: torch.Generator | None = None,
                       max_tries: int = 10_000) -> tuple[torch.Tensor, torch.Tensor]:
    """Accept ``draft`` (one per row, drawn from ``q``) with probability ``min(1, p/q)``, else resample.

    Returns ``(accepted (B,) bool, value)``: ``value`` is ``draft`` where accepted, else a draw
    from the residual; it is distributed as ``p``.
    """
    ratio = acceptance_ratio(p.log_prob(draft), q.log_prob(draft))
    accepted = _uniform(ratio.shape, ratio, generator) < ratio
    if bool(accepted.all()):
        return accepted, draft
    resampled = residual_sample(p, q, generator, max_tries)
    return accepted, torch.where(accepted, draft, resampled)


class Categorical:
    """A batch of categorical distributions (``probs`` (B, V)) in the :class:`Density` terms."""

    def __init__(self, probs: torch.Tensor):
        self.probs = probs

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(self.probs.gather(-1, x[..., None]).squeeze(-1))

    def sample(self, generator=None) -> torch.Tensor:
        return torch.multinomial(self.probs, 1, generator=generator).squeeze(-1)

    def residual(self, q: "Categorical", generator=None) -> torch.Tensor:
        """An exact draw from ``norm(max(0, p - q))`` (``p`` itself where the two are equal)."""
        mass = (self.probs - q.probs).clamp_min(0)
        total = mass.sum(-1, keepdim=True)
        dist = torch.where(total > 0, mass / total.clamp_min(torch.finfo(mass.dtype).tiny), self.probs)
        return torch.multinomial(dist, 1, generator=generator).squeeze(-1)


class GaussianMixture1D:
    """A batch of 1-D Gaussian mixtures: ``logits``, ``loc``, ``scale`` all (B, K)."""

    def __init__(self, logits: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor):
        if not (logits.shape == loc.shape == scale.shape):
            raise ValueError(f"logits, loc and scale must have one shape, got {tuple(logits.shape)}, {tuple(loc.shape)}, {tuple(scale.shape)}")
        self.logits, self.loc, self.scale = logits, loc, scale

    @property
    def weights(self) -> torch.Tensor:
        return torch.softmax(self.logits, -1)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        z = (x[..., None] - self.loc) / self.scale
        comp = -0.5 * z ** 2 - torch.log(self.scale) - 0.5 * math.log(2 * math.pi)
        return torch.logsumexp(torch.log_softmax(self.logits, -1) + comp, -1)

    def cdf(self, x: torch.Tensor) -> torch.Tensor:
        return (self.weights * 0.5 * (1 + torch.erf((x[..., None] - self.loc) / (self.scale * math.sqrt(2))))).sum(-1)

    def sample(self, generator=None) -> torch.Tensor:
        pick = torch.multinomial(self.weights.reshape(-1, self.loc.shape[-1]), 1, generator=generator).reshape(self.loc.shape[:-1])
        loc = self.loc.gather(-1, pick[..., None]).squeeze(-1)
        scale = self.scale.gather(-1, pick[..., None]).squeeze(-1)
        return loc + scale * torch.randn(loc.shape, generator=generator, dtype=loc.dtype, device=loc.device)


# -- acceptance rules for categorical distributions --------------------------------------------------


def total_variation(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``TV(p, q) = sum |p - q| / 2`` over the last dimension."""
    return 0.5 * (p - q).abs().sum(-1)


def categorical_residual(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``norm(max(0, p - q))`` over the last dimension; ``p`` where the two are equal (never used then)."""
    mass = (p - q).clamp_min(0)
    total = mass.sum(-1, keepdim=True)
    return torch.where(total > 0, mass / total.clamp_min(torch.finfo(mass.dtype).tiny), p)


def _gather(probs: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return probs.gather(-1, index[..., None]).squeeze(-1)


class ExactAcceptance:
    """Speculative sampling's rule: accept ``x ~ q`` with ``min(1, p(x) / q(x))`` (output law ``p``)."""

    relaxed = False

    def accept_probability(self, p: torch.Tensor, q: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """(...) probability of accepting draft ``x`` (...) for target ``p`` and draft law ``q`` (..., V)."""
        p_x, q_x = _gather(p, x), _gather(q, x)
        return torch.where(q_x > 0, p_x / torch.where(q_x > 0, q_x, torch.ones_like(q_x)), torch.ones_like(p_x)).clamp(max=1.0)


class RelaxedAcceptance(ExactAcceptance):
    """LANTERN's relaxed acceptance: accept ``x ~ q`` with ``min(1, p(A(x)) / q(x))``.

    ``neighbours`` (V, k) holds each token's ``k`` nearest tokens in the latent space of the image
    tokenizer, the token itself first (``-1`` pads; :func:`genloom.toolkit.image_ar.latent_neighbours`).
    ``A(x)`` is the longest prefix of ``x``'s neighbour list (nearest first, ``x`` itself always in)
    whose relaxed acceptance probability exceeds the exact one by at most ``delta``::

        A(x) = B_m(x),  m = max{ j <= k : min(1, p(B_j(x)) / q(x)) - min(1, p(x) / q(x)) <= delta }

    The bound this gives. Each draft's acceptance probability rises by at most ``delta``, and only
    where ``q(x) > p(x)`` (elsewhere it is already 1); the residual is the exact one,
    ``norm(max(0, p - q))``, supported where ``p > q``. The output law is therefore ``p`` plus the
    extra accepted mass ``e(y) = q(y) (a(y) - a_exact(y))`` minus as much residual mass, on disjoint
    supports, so ``TV(output, p) = sum_y e(y) <= delta * sum_{q > p} q(y) <= delta`` exactly. With
    ``k = 1`` or ``delta = 0`` the rule is the exact one.

    The paper bounds the total variation of the per-draft relaxed target (the mass of ``A(x)``
    moved onto ``x``) by ``delta``; that bounds each draft but not the law of the output, which can
    drift by up to ``delta`` per draft token. The limit here is on the acceptance probability, so
    that ``delta`` bounds the distance of the output law from the target's (our choice).
    """

    relaxed = True

    def __init__(self, neighbours: torch.Tensor, delta: float):
        if neighbours.dim() != 2:
            raise ValueError(f"neighbours must be (V, k), got shape {tuple(neighbours.shape)}")
        if delta < 0:
            raise ValueError(f"delta must be >= 0, got {delta}")
        self.neighbours = neighbours.long()
        self.delta = float(delta)

    def neighbourhood_mass(self, p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """(..., k): ``p(B_j(x))`` for j = 1..k (the running mass of ``x``'s nearest tokens)."""
        rows = self.neighbours.to(x.device)[x]  # (..., k)
        mass = p.gather(-1, rows.clamp_min(0)).masked_fill(rows < 0, 0.0)
        return mass.cumsum(-1)

    def accept_probability(self, p: torch.Tensor, q: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        q_x = _gather(q, x)
        safe_q = torch.where(q_x > 0, q_x, torch.ones_like(q_x))[..., None]
        relaxed = (self.neighbourhood_mass(p, x) / safe_q).clamp(max=1.0)  # (..., k), non-decreasing in j
        exact = relaxed[..., :1]
        allowed = relaxed - exact <= self.delta + 1e-12
        best = torch.where(allowed, relaxed, torch.zeros_like(relaxed)).amax(-1)
        return torch.where(q_x > 0, best, torch.ones_like(best))

    def neighbourhood_size(self, p: torch.Tensor, q: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """(...) ``|A(x)|``: how many of ``x``'s nearest tokens the rule aggregates."""
        q_x = _gather(q, x).clamp_min(torch.finfo(p.dtype).tiny)[..., None]
        relaxed = (self.neighbourhood_mass(p, x) / q_x).clamp(max=1.0)
        valid = self.neighbours.to(x.device)[x] >= 0
        return ((relaxed - relaxed[..., :1] <= self.delta + 1e-12) & valid).sum(-1)


def output_law(rule, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """The exact law (..., V) of the token one verification step outputs, by enumerating the draft.

    ``P(out = y) = q(y) a(y) + (1 - sum_x q(x) a(x)) norm(max(0, p - q))(y)``: accepted drafts plus
    residual draws. For :class:`ExactAcceptance` it is ``p``.
    """
    vocab = p.shape[-1]
    every = torch.arange(vocab, device=p.device).expand(p.shape)
    accepted = q * rule.accept_probability(p.unsqueeze(-2).expand(*p.shape[:-1], vocab, vocab),
                                           q.unsqueeze(-2).expand(*q.shape[:-1], vocab, vocab), every)
    rejected = (1.0 - accepted.sum(-1, keepdim=True)).clamp_min(0.0)
    return accepted + rejected * categorical_residual(p, q)


def verify_chain(rule, target_probs: torch.Tensor, draft_probs: torch.Tensor, drafts: torch.Tensor,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Verify a block of ``gamma`` drafts per row with ``rule``, left to right.

    ``target_probs`` (B, gamma + 1, V); ``draft_probs`` (B, gamma, V) the laws the drafts were drawn
    from; ``drafts`` (B, gamma). Returns ``(num_accepted (B,), next_token (B,), accept_probability
    (B, gamma))``: the longest prefix of drafts that pass, then a residual draw at the first rejection
    or a bonus draw from ``target_probs[:, gamma]`` when all pass. With :class:`ExactAcceptance` this is
    speculative sampling (Leviathan et al. 2023, Alg. 1).
    """
    batch, gamma, vocab = draft_probs.shape
    if target_probs.shape != (batch, gamma + 1, vocab):
        raise ValueError(f"target_probs must be (B, gamma + 1, V) = {(batch, gamma + 1, vocab)}, got {tuple(target_probs.shape)}")
    p = target_probs[:, :gamma]
    chance = rule.accept_probability(p, draft_probs, drafts)
    passes = torch.rand((batch, gamma), generator=generator, dtype=chance.dtype, device=chance.device) < chance
    num_accepted = passes.long().cumprod(-1).sum(-1)
    next_laws = torch.cat([categorical_residual(p, draft_probs), target_probs[:, gamma:]], dim=1)
    chosen = next_laws.gather(1, num_accepted[:, None, None].expand(batch, 1, vocab)).squeeze(1)
    flat = chosen if chosen.dtype in (torch.float32, torch.float64) else chosen.float()
    return num_accepted, torch.multinomial(flat, 1, generator=generator).squeeze(1), chance


def probability_rank_groups(p: torch.Tensor, group_size: int) -> torch.Tensor:
    """(..., V) group id of every token: the vocabulary sorted by ``p`` (descending, ties by id) and cut
    into consecutive runs of ``group_size`` tokens, so a group holds tokens of adjacent target probability."""
    order = torch.sort(p, dim=-1, descending=True, stable=True).indices
    rank = torch.empty_like(order).scatter_(-1, order, torch.arange(p.shape[-1], device=p.device).expand(p.shape).contiguous())
    return torch.div(rank, group_size, rounding_mode="floor")


class GroupAcceptance(ExactAcceptance):
    """Grouped acceptance (GSD): accept ``x ~ q`` with ``min(1, p(G(x)) / q(G(x)))``.

    ``G(x)`` is ``x``'s group in a partition of the vocabulary that is drawn anew at every position
    from the target's law (dynamic grouping, :func:`probability_rank_groups`): tokens of adjacent
    target probability rank, ``group_size`` per group. ``group_size = 1`` is the exact rule. The
    expected acceptance is ``sum_G min(p(G), q(G))`` (one minus the total variation of the grouped
    laws); a coarser partition can only raise it (``min`` is superadditive), so it is non-decreasing
    along group sizes that divide one another (1, 2, 4, 8...), where each partition refines the next.
    On rejection the token comes from the exact residual ``norm(max(0, p - q))``.
    """

    def __init__(self, group_size: int):
        if int(group_size) < 1:
            raise ValueError(f"group_size must be >= 1, got {group_size}")
        self.group_size = int(group_size)

    @property
    def relaxed(self) -> bool:
        return self.group_size > 1

    def accept_probability(self, p: torch.Tensor, q: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.group_size == 1:
            return super().accept_probability(p, q, x)
        groups = probability_rank_groups(p, self.group_size)
        same = groups == groups.gather(-1, x[..., None])
        p_group = torch.where(same, p, torch.zeros_like(p)).sum(-1)
        q_group = torch.where(same, q, torch.zeros_like(q)).sum(-1)
        return torch.where(q_group > 0, p_group / torch.where(q_group > 0, q_group, torch.ones_like(q_group)), torch.ones_like(p_group)).clamp(max=1.0)
