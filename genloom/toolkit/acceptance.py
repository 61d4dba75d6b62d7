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
