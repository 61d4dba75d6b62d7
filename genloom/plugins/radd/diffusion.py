"""The absorbing (masking) diffusion process of RADD, as plain tensor functions.

Forward process (Ou et al. 2024, Sec. 2): every token is independently replaced by the mask
token with probability ``1 - exp(-sigma_bar(t))`` where ``sigma_bar`` is the cumulative noise.
With the log-linear schedule ``sigma_bar(t) = -log(1 - (1 - eps) t)`` the masking probability is
``(1 - eps) t``, and the ELBO weight ``sigma(t) e^{-sigma_bar}/(1 - e^{-sigma_bar})`` is ``1/t``.

The paper's key identity (Theorem 1): for a state ``x_t`` whose position ``i`` is masked,

    p_t(x_t with x^i := y) / p_t(x_t) = e^{-sigma_bar} / (1 - e^{-sigma_bar}) * p_0(x^i = y | x_t^UM)

where ``x_t^UM`` are the unmasked tokens of ``x_t``. The conditional does not depend on ``t``, so
the network needs no time input. :func:`concrete_score` turns clean-data conditionals into the
concrete score with that scalar.
"""

from __future__ import annotations

import math

import torch


def loglinear_sigma_bar(t: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """Cumulative noise of the log-linear schedule: ``-log(1 - (1 - eps) t)``."""
    return -torch.log1p(-(1.0 - eps) * t)


def loglinear_sigma(t: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """Noise rate ``d sigma_bar / dt`` of the log-linear schedule."""
    return (1.0 - eps) / (1.0 - (1.0 - eps) * t)


def mask_probability(sigma_bar: torch.Tensor) -> torch.Tensor:
    """Probability that a token is masked at cumulative noise ``sigma_bar``: ``1 - e^{-sigma_bar}``."""
    return -torch.expm1(-sigma_bar)


def score_scale(sigma_bar: torch.Tensor) -> torch.Tensor:
    """The analytic time factor ``e^{-sigma_bar} / (1 - e^{-sigma_bar})`` of Theorem 1."""
    return torch.exp(-sigma_bar) / (-torch.expm1(-sigma_bar))


def corrupt(x0: torch.Tensor, mask_prob: torch.Tensor, mask_id: int, *, generator: torch.Generator | None = None,
            keep: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask each token of ``x0`` (B, L) independently with probability ``mask_prob`` (B,) or (B, L).

    ``keep`` (B, L) bool marks positions that are never masked (a prompt). Returns the noisy
    ids and the boolean mask of masked positions.
    """
    prob = mask_prob if mask_prob.dim() == x0.dim() else mask_prob.reshape(-1, *([1] * (x0.dim() - 1)))
    u = torch.rand(x0.shape, generator=generator, device=x0.device)
    masked = u < prob
    if keep is not None:
        masked = masked & ~keep
    return torch.where(masked, torch.full_like(x0, mask_id), x0), masked


def mask_exactly(x0: torch.Tensor, counts: torch.Tensor, mask_id: int, *, generator: torch.Generator | None = None,
                 maskable: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask exactly ``counts[b]`` positions of row ``b``, chosen uniformly among ``maskable`` ones."""
    u = torch.rand(x0.shape, generator=generator, device=x0.device)
    if maskable is not None:
        u = torch.where(maskable, u, torch.full_like(u, 2.0))
    rank = u.argsort(dim=-1).argsort(dim=-1)
    masked = rank < counts.reshape(-1, 1)
    if maskable is not None:
        masked = masked & maskable
    return torch.where(masked, torch.full_like(x0, mask_id), x0), masked


def clean_logits(logits: torch.Tensor, mask_id: int) -> torch.Tensor:
    """Logits of ``p_theta(x0 | x_t^UM)``: the mask token is never a clean token (its logit is -inf)."""
    logits = logits.clone()
    logits[..., mask_id] = float("-inf")
    return logits


def masked_cross_entropy(logits: torch.Tensor, x0: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """Per-position ``-log p_theta(x0^i | x_t)`` at masked positions, exactly 0 elsewhere (B, L).

    Unmasked positions are dropped *before* the log-softmax is gathered, so their logits get no
    gradient at all: the network's output there is irrelevant to the loss.
    """
    logp = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
    nll = -logp.gather(-1, x0.unsqueeze(-1)).squeeze(-1)
    return torch.where(masked, nll, torch.zeros_like(nll))


def concrete_score(clean_probs: torch.Tensor, x_t: torch.Tensor, sigma_bar: torch.Tensor | float, mask_id: int) -> torch.Tensor:
    """The concrete score of absorbing diffusion from clean-data conditionals (Theorem 1).

    ``clean_probs`` (B, L, V): ``p_0(x^i = y | x_t^UM)`` for every position; ``x_t`` (B, L);
    ``sigma_bar`` scalar or (B,). Returns (B, L, V) with entry ``[b, i, y]`` equal to
    ``p_t(x_t with x^i := y) / p_t(x_t)`` for masked positions ``i`` and clean tokens ``y``;
    entries at unmasked positions and in the mask column are 0 (the reverse process never moves
    there, so the score is not needed).
    """
    sigma_bar = torch.as_tensor(sigma_bar, dtype=clean_probs.dtype, device=clean_probs.device)
    scale = score_scale(sigma_bar).reshape(-1, 1, 1) if sigma_bar.dim() else score_scale(sigma_bar)
    score = scale * clean_probs
    score = torch.where((x_t == mask_id).unsqueeze(-1), score, torch.zeros_like(score))
    score[..., mask_id] = 0.0
    return score


def time_grid(steps: int, eps: float = 1e-5, device=None) -> torch.Tensor:
    """``steps + 1`` times from 1 down to 0 (the last step unmasks everything)."""
    grid = torch.linspace(1.0, eps, steps + 1, dtype=torch.float64, device=device)
    grid[-1] = 0.0
    return grid


LOG2 = math.log(2.0)
