"""SpecTr's draft selection, the pure math (Sun et al. 2023, arXiv 2310.15141).

Token level. Given ``k`` i.i.d. candidates ``X_1..X_k ~ q``, a *draft selection* outputs ``Y ~ p``
and wants ``P(Y in {X_1..X_k})`` (the acceptance probability) as large as possible: an optimal
transport problem with membership cost, whose optimum is a linear program exponential in ``k``.
K-SEQ (the paper's sequential selection) visits the candidates in order and returns ``X_i`` with
probability ``min(1, p(X_i) / (rho q(X_i)))``; if none is returned, ``Y`` is drawn from the residual

    p_res(x) = (p(x) - min(q(x), p(x)/rho) (1 - (1 - beta)^k) / beta) / (1 - beta)^k,
    beta = beta_{p,q}(rho) = sum_x min(q(x), p(x)/rho),

so that ``P(Y = x) = p(x)`` exactly. ``p_res`` is a distribution iff
``1 - (1 - beta(rho))^k <= rho beta(rho)``; the acceptance probability ``1 - (1 - beta(rho))^k``
decreases with ``rho``, so the best valid choice is the root ``rho*`` of
``1 - (1 - beta)^k = rho beta`` in ``[1, k]`` (found exactly on its smooth piece, see kseq_optimal_rho), which is within
``1 - (1 - 1/k)^k >= 1 - 1/e`` of the optimal transport plan. With ``k = 1``, ``rho* = 1`` and
K-SEQ is speculative sampling.

Sequence level (SpecTr): ``k`` i.i.d. draft sequences of length ``gamma`` from the draft model form
a prefix tree; position by position, K-SEQ runs over the drafts still consistent with the tokens
chosen so far (they are i.i.d. draws of ``q`` given that prefix), drafts that disagree with the
chosen token are dropped, and the block ends at the first residual draw or with a bonus token
from ``p`` when a draft survives all ``gamma`` positions.

All functions take probabilities with the vocabulary last and are batched over leading dims.
Computations of ``rho`` and the residual run in float64.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

#: ``f(rho) = 1 - (1 - beta)^k - rho beta`` counts as <= 0 below this (float64 rounding).
_VALID_TOLERANCE = 1e-12


def sample_categorical(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One draw per row of ``probs`` (..., V) -> (...)."""
    flat = probs.reshape(-1, probs.shape[-1])
    flat = flat if flat.dtype in (torch.float32, torch.float64) else flat.float()
    return torch.multinomial(flat, 1, generator=generator).reshape(probs.shape[:-1])


def _as_batch(value, like: torch.Tensor) -> torch.Tensor:
    """A float64 tensor of ``like.shape[:-1]`` from a number or tensor."""
    return torch.as_tensor(value, dtype=torch.float64, device=like.device).expand(like.shape[:-1]).clone()


def kseq_beta(p: torch.Tensor, q: torch.Tensor, rho) -> torch.Tensor:
    """``beta_{p,q}(rho) = sum_x min(q(x), p(x) / rho)``: one candidate's chance to be returned."""
    p, q = p.double(), q.double()
    return torch.minimum(q, p / _as_batch(rho, p)[..., None]).sum(-1)


def _excess(p: torch.Tensor, q: torch.Tensor, num_drafts: torch.Tensor, rho: torch.Tensor) -> torch.Tensor:
    """``1 - (1 - beta)^k - rho beta``: positive where ``rho`` is not valid."""
    beta = kseq_beta(p, q, rho)
    return 1 - (1 - beta) ** num_drafts - rho * beta


def kseq_optimal_rho(p: torch.Tensor, q: torch.Tensor, num_drafts, iterations: int = 10) -> torch.Tensor:
    """The smallest valid ``rho`` in ``[1, k]`` (the paper's ``rho*``), per row.

    The excess ``1 - (1 - beta(rho))^k - rho beta(rho)`` is non-increasing in ``rho``, >= 0 at
    ``rho = 1`` and <= 0 at ``rho = k``. ``beta`` is piecewise ``A + B / rho`` with breakpoints at
    the ratios ``p(x) / q(x)``: the breakpoints are evaluated at once from sorted prefix sums
    (O(V log V) per row), then the root is found on the one smooth piece that holds it by the
    Illinois method (regula falsi with a kept bracket, O(1) per step). The returned value is always on the valid side of the root.
    """
    p, q = p.double(), q.double()
    num = _as_batch(num_drafts, p).clamp_min(1)
    ratio = torch.where(q > 0, p / torch.where(q > 0, q, torch.ones_like(q)), torch.full_like(q, math.inf))
    sorted_ratio, order = ratio.sort(-1)
    p_sorted, q_sorted = p.gather(-1, order), q.gather(-1, order)
    p_below = p_sorted.cumsum(-1) - p_sorted  # sum of p over smaller ratios
    q_from = q_sorted.flip(-1).cumsum(-1).flip(-1)  # sum of q over this and larger ratios
    in_range = (sorted_ratio >= 1) & (sorted_ratio <= num[..., None])
    point = torch.where(in_range, sorted_ratio, torch.ones_like(sorted_ratio))
    beta_at = q_from + p_below / point
    valid_at = in_range & (1 - (1 - beta_at) ** num[..., None] - point * beta_at <= _VALID_TOLERANCE)
    high = torch.minimum(torch.where(valid_at, sorted_ratio, torch.full_like(point, math.inf)).min(-1).values, num)
    below = in_range & (sorted_ratio < high[..., None])
    low = torch.where(below, sorted_ratio, torch.ones_like(point)).max(-1).values
    # between low and high no ratio lies strictly inside: beta(rho) = A + B / rho
    above = ratio >= high[..., None]
    a = torch.where(above, q, torch.zeros_like(q)).sum(-1)
    b = torch.where(above, torch.zeros_like(p), p).sum(-1)

    root = _illinois(*(t.detach().cpu().numpy() for t in (a, b, num, low, high)), iterations)
    high = torch.as_tensor(root, dtype=torch.float64, device=p.device).reshape(high.shape)
    one_is_valid = _excess(p, q, num, torch.ones_like(num)) <= _VALID_TOLERANCE
    return torch.where(one_is_valid, torch.ones_like(high), high)


def _illinois(a, b, num, low, high, iterations: int):
    """Root of ``1 - (1 - beta)^k - rho beta`` with ``beta = a + b / rho`` on ``[low, high]``.

    The Illinois method (regula falsi keeping a bracket, superlinear); the returned end is always
    on the valid side. Runs in numpy: the arrays are one value per row, and on small batches the
    per-operation cost of torch would dominate decoding.
    """

    def excess(rho):
        beta = a + b / rho
        return 1 - (1 - beta) ** num - rho * beta

    low, high = low.copy(), high.copy()
    f_low, f_high = excess(low), excess(high)
    side = np.zeros_like(low)  # +1: high moved last step, -1: low moved
    with np.errstate(divide="ignore", invalid="ignore"):
        for _ in range(iterations):
            gap = f_low - f_high
            secant = (high * f_low - low * f_high) / np.where(gap > 0, gap, 1.0)
            inside = (gap > 0) & (secant > low) & (secant < high)
            mid = np.where(inside, secant, (low + high) / 2)
            f_mid = excess(mid)
            valid = f_mid <= _VALID_TOLERANCE
            high, f_high = np.where(valid, mid, high), np.where(valid, f_mid, f_high)
            low, f_low = np.where(valid, low, mid), np.where(valid, f_low, f_mid)
            # Illinois: when the same end moves twice in a row, halve the other end's value
            f_low = np.where(valid & (side > 0), f_low / 2, f_low)
            f_high = np.where(~valid & (side < 0), f_high / 2, f_high)
            side = np.where(valid, 1.0, -1.0)
    return high


def kseq_acceptance(p: torch.Tensor, q: torch.Tensor, num_drafts, rho=None) -> torch.Tensor:
    """Probability that K-SEQ returns one of the ``k`` candidates: ``1 - (1 - beta(rho))^k``."""
    num = _as_batch(num_drafts, p.double())
    rho = kseq_optimal_rho(p, q, num) if rho is None else _as_batch(rho, p.double())
    return 1 - (1 - kseq_beta(p, q, rho)) ** num


def kseq_residual(p: torch.Tensor, q: torch.Tensor, num_drafts, rho) -> torch.Tensor:
    """The residual ``p_res`` drawn from when no candidate is returned (float64)."""
    p, q = p.double(), q.double()
    num = _as_batch(num_drafts, p)
    rho = _as_batch(rho, p)
    capped = torch.minimum(q, p / rho[..., None])
    beta = capped.sum(-1)
    returned = 1 - (1 - beta) ** num  # P(some candidate is returned)
    scale = torch.where(beta > 0, returned / beta.clamp_min(torch.finfo(p.dtype).tiny), torch.zeros_like(beta))
    mass = (p - capped * scale[..., None]).clamp_min(0)  # clamp: rounding only, rho is valid
    total = mass.sum(-1, keepdim=True)
    return torch.where(total > 0, mass / total.clamp_min(torch.finfo(p.dtype).tiny), p)


class Selection(NamedTuple):
    """Outcome of one K-SEQ draft selection per row."""

    accepted: torch.Tensor
    """(...) bool: the token is one of the candidates' (returned by the sequential test)."""
    token: torch.Tensor
    """(...) the selected token, distributed as ``p``."""
    index: torch.Tensor
    """(...) index of the returned candidate, -1 where the token came from the residual."""
    rho: torch.Tensor
    """(...) the ``rho`` used."""


def kseq_select(
    p: torch.Tensor,
    q: torch.Tensor,
    candidates: torch.Tensor,
    alive: torch.Tensor | None = None,
    rho: float | None = None,
    generator: torch.Generator | None = None,
) -> Selection:
    """K-SEQ draft selection (Sun et al. 2023, Algorithm 2), batched.

    ``p``, ``q``: (..., V); ``candidates``: (..., k) ids drawn i.i.d. from ``q``; ``alive``: (..., k)
    bool, which candidates take part (the number alive is the row's ``k``; default all).
    ``rho``: ``None`` uses ``rho*`` per row; a number fixes it, raised to ``rho*`` in rows where
    it would not be valid (an invalid ``rho`` would bias the output away from ``p``).
    """
    if alive is None:
        alive = torch.ones_like(candidates, dtype=torch.bool)
    num = alive.sum(-1).double()
    rho_used = kseq_optimal_rho(p, q, num)
    if rho is not None:
        if rho < 1:
            raise ValueError(f"rho must be >= 1, got {rho}")
        rho_used = torch.maximum(rho_used, torch.full_like(rho_used, float(rho)))
    p64, q64 = p.double(), q.double()
    p_x = p64.gather(-1, candidates)
    q_x = q64.gather(-1, candidates)
    safe_q = torch.where(q_x > 0, q_x, torch.ones_like(q_x))
    ratio = torch.where(q_x > 0, p_x / (rho_used[..., None] * safe_q), torch.ones_like(q_x)).clamp(max=1.0)
    uniform = torch.rand(candidates.shape, generator=generator, device=p.device, dtype=torch.float64)
    passes = alive & (uniform < ratio)
    k = candidates.shape[-1]
    positions = torch.arange(k, device=p.device).expand_as(candidates)
    first = torch.where(passes, positions, torch.full_like(positions, k)).min(-1).values
    accepted = first < k
    picked = candidates.gather(-1, first.clamp(max=k - 1)[..., None]).squeeze(-1)
    resampled = sample_categorical(kseq_residual(p64, q64, num, rho_used), generator)
    token = torch.where(accepted, picked, resampled)
    index = torch.where(accepted, first, torch.full_like(first, -1))
    return Selection(accepted, token, index, rho_used)


class TreeResult(NamedTuple):
    """Outcome of verifying ``k`` draft sequences per batch row."""

    num_accepted: torch.Tensor
    """(B,) draft tokens accepted, 0..gamma."""
    tokens: torch.Tensor
    """(B, gamma + 1): the accepted tokens, then the next token, then zeros."""
    winner: torch.Tensor
    """(B,) a draft whose first ``num_accepted`` tokens are the accepted ones."""
    accepted: torch.Tensor
    """(B, gamma) bool: position i was reached and a draft token was selected there."""
    alive: torch.Tensor
    """(B, gamma) number of drafts still taking part at each position (0 once the block ended)."""


def spectr_block(
    target_probs: torch.Tensor,
    draft_probs: torch.Tensor,
    drafts: torch.Tensor,
    rho: float | None = None,
    generator: torch.Generator | None = None,
) -> TreeResult:
    """SpecTr verification of ``k`` i.i.d. draft sequences per row (Sun et al. 2023, Algorithm 3).

    ``drafts``: (B, k, gamma), each row of ``k`` sampled independently from the draft model given
    the same context; ``draft_probs``: (B, k, gamma, V) the draft distributions they were sampled
    from; ``target_probs``: (B, k, gamma + 1, V) the target's distributions after each draft prefix
    (identical across drafts that share the prefix).
    """
    batch, k, gamma = drafts.shape
    vocab = draft_probs.shape[-1]
    if target_probs.shape != (batch, k, gamma + 1, vocab):
        raise ValueError(f"target_probs must be (B, k, gamma + 1, V) = {(batch, k, gamma + 1, vocab)}, got {tuple(target_probs.shape)}")
    rows = torch.arange(batch, device=drafts.device)
    alive = torch.ones(batch, k, dtype=torch.bool, device=drafts.device)
    active = torch.ones(batch, dtype=torch.bool, device=drafts.device)
    num_accepted = torch.zeros(batch, dtype=torch.long, device=drafts.device)
    tokens = drafts.new_zeros(batch, gamma + 1)
    accepted_mask = torch.zeros(batch, gamma, dtype=torch.bool, device=drafts.device)
    alive_counts = torch.zeros(batch, gamma, dtype=torch.long, device=drafts.device)
    for t in range(gamma):
        lead = alive.long().argmax(-1)  # any surviving draft: they share the prefix, hence p and q
        alive_counts[:, t] = torch.where(active, alive.sum(-1), torch.zeros_like(num_accepted))
        candidates = drafts[:, :, t]
        choice = kseq_select(target_probs[rows, lead, t], draft_probs[rows, lead, t], candidates, alive, rho, generator)
        tokens[:, t] = torch.where(active, choice.token, tokens[:, t])
        took = active & choice.accepted
        accepted_mask[:, t] = took
        num_accepted += took.long()
        alive = torch.where(took[:, None], alive & (candidates == choice.token[:, None]), alive)
        active = took
    lead = alive.long().argmax(-1)
    bonus = sample_categorical(target_probs[rows, lead, gamma], generator)
    tokens[:, gamma] = torch.where(active, bonus, tokens[:, gamma])
    return TreeResult(num_accepted, tokens, lead, accepted_mask, alive_counts)
