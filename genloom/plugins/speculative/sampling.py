"""Speculative sampling, the pure math (Leviathan et al. 2023, Chen et al. 2023).

One position: a draft token ``x ~ q`` is accepted with probability ``min(1, p(x) / q(x))``; on
rejection the token is drawn from the residual ``norm(max(0, p - q))``. The output is distributed
exactly as ``p`` and the acceptance probability is ``sum_x min(p(x), q(x)) = 1 - TV(p, q)``.

A block of ``gamma`` drafts is verified left to right: the first rejection stops the block and its
position gets a residual token; when all drafts are accepted a bonus token is drawn from the
target distribution after the last draft. Every function is batched over the leading dimension,
and sequences of a batch accept different numbers of tokens.

All functions take probabilities (not logits) with the vocabulary last.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class BlockResult(NamedTuple):
    """Outcome of verifying a block of drafts for each sequence of a batch."""

    num_accepted: torch.Tensor
    """(B,) accepted drafts, 0..gamma."""
    next_token: torch.Tensor
    """(B,) the token after the accepted drafts (residual sample, or bonus token when all accepted)."""
    accepted: torch.Tensor
    """(B, gamma) bool: position i of the block was reached and its draft accepted."""

    def tokens(self, drafts: torch.Tensor) -> torch.Tensor:
        """(B, gamma + 1): accepted drafts, then ``next_token``, then zeros (``num_accepted + 1`` are committed)."""
        batch, gamma = drafts.shape
        out = torch.cat([drafts, drafts.new_zeros(batch, 1)], dim=1)
        return out.scatter(1, self.num_accepted[:, None], self.next_token[:, None])


def sample_categorical(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One draw per row of ``probs`` (..., V) -> (...)."""
    flat = probs.reshape(-1, probs.shape[-1])
    flat = flat if flat.dtype in (torch.float32, torch.float64) else flat.float()
    return torch.multinomial(flat, 1, generator=generator).reshape(probs.shape[:-1])


def acceptance_probability(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Probability that a draft ``x ~ q`` is accepted for target ``p``: ``sum min(p, q)``."""
    return torch.minimum(p, q).sum(-1)


def residual_distribution(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``norm(max(0, p - q))``; where ``p == q`` (nothing is ever rejected) it falls back to ``p``."""
    mass = (p - q).clamp_min(0)
    total = mass.sum(-1, keepdim=True)
    return torch.where(total > 0, mass / total.clamp_min(torch.finfo(mass.dtype).tiny), p)


def _ratio(p_x: torch.Tensor, q_x: torch.Tensor) -> torch.Tensor:
    # min(1, p/q); a draft with q(x) = 0 is never drawn, treat it as accepted to avoid 0/0.
    safe = torch.where(q_x > 0, q_x, torch.ones_like(q_x))
    return torch.where(q_x > 0, p_x / safe, torch.ones_like(p_x)).clamp(max=1.0)


def _uniform(shape, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(shape, generator=generator, device=like.device, dtype=torch.float64 if like.dtype == torch.float64 else torch.float32)


def speculative_accept(
    p: torch.Tensor, q: torch.Tensor, draft: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Accept or resample one draft per row.

    ``p``, ``q``: (..., V) target and draft probabilities; ``draft``: (...) ids drawn from ``q``.
    Returns ``(accepted (...) bool, token (...))``: ``token`` is ``draft`` where accepted, else a
    draw from ``norm(max(0, p - q))``. ``token`` is distributed as ``p``.
    """
    p_x = p.gather(-1, draft[..., None]).squeeze(-1)
    q_x = q.gather(-1, draft[..., None]).squeeze(-1)
    accepted = _uniform(draft.shape, p, generator) < _ratio(p_x, q_x)
    resampled = sample_categorical(residual_distribution(p, q), generator)
    return accepted, torch.where(accepted, draft, resampled)


def speculative_block(
    target_probs: torch.Tensor,
    draft_probs: torch.Tensor,
    drafts: torch.Tensor,
    generator: torch.Generator | None = None,
) -> BlockResult:
    """Verify ``gamma`` drafts per sequence (Leviathan et al. 2023, Algorithm 1).

    ``target_probs``: (B, gamma + 1, V), the target's distribution at each draft position and after
    the last draft; ``draft_probs``: (B, gamma, V), the distributions the drafts were sampled from;
    ``drafts``: (B, gamma). Each row accepts the longest prefix of drafts that pass their test and
    then draws the next token from the residual at the first rejected position, or from
    ``target_probs[:, gamma]`` when all were accepted.
    """
    batch, gamma, vocab = draft_probs.shape
    if target_probs.shape != (batch, gamma + 1, vocab):
        raise ValueError(f"target_probs must be (B, gamma + 1, V) = {(batch, gamma + 1, vocab)}, got {tuple(target_probs.shape)}")
    p = target_probs[:, :gamma]
    p_x = p.gather(-1, drafts[..., None]).squeeze(-1)
    q_x = draft_probs.gather(-1, drafts[..., None]).squeeze(-1)
    passes = _uniform((batch, gamma), p, generator) < _ratio(p_x, q_x)
    accepted = passes.long().cumprod(-1).bool()  # a draft counts only if every earlier one passed
    num_accepted = accepted.sum(-1)
    next_dists = torch.cat([residual_distribution(p, draft_probs), target_probs[:, gamma:]], dim=1)
    chosen = next_dists.gather(1, num_accepted[:, None, None].expand(batch, 1, vocab)).squeeze(1)
    return BlockResult(num_accepted, sample_categorical(chosen, generator), accepted)


def greedy_block(target_logits: torch.Tensor, drafts: torch.Tensor) -> BlockResult:
    """Greedy verification: a draft is accepted while it equals the target's argmax.

    ``target_logits``: (B, gamma + 1, V) (logits or probabilities); ``drafts``: (B, gamma). The
    committed tokens are exactly what greedy decoding of the target alone produces.
    """
    batch, gamma = drafts.shape
    best = target_logits.argmax(-1)
    accepted = (best[:, :gamma] == drafts).long().cumprod(-1).bool()
    num_accepted = accepted.sum(-1)
    return BlockResult(num_accepted, best.gather(1, num_accepted[:, None]).squeeze(1), accepted)
