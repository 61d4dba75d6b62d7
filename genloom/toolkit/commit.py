"""Parallel commit rules for masked-canvas decoders, as composable functions.

Each rule is one decision of a decoding step, so a decoder combines them instead of copying them
(:class:`genloom.toolkit.canvas.ConfidenceCanvasDecoder` takes them as options):

- :func:`threshold_positions` -- Fast-dLLM / SDAR parallel decoding: reveal every allowed
  position whose confidence is at least ``tau``, and at least the most confident one, so a block
  of n positions takes at most n steps;
- :func:`fill_after_eos` -- End-of-Text Prediction (Learn2PD): once a row's EOS is decoded, the
  masked positions after it can only be padding; they are filled at once and no step is spent
  on them;
- :func:`guided_logits` -- discrete classifier guidance (CtrlDiff): reweight the denoiser's
  clean-token distribution ``p(x0 | xt) * p(y | x0)^gamma`` and renormalise; gamma 0 is unguided.
"""

from __future__ import annotations

import torch


def threshold_positions(confidence: torch.Tensor, allowed: torch.Tensor, tau: float) -> torch.Tensor:
    """Boolean (B, L): allowed positions with ``confidence >= tau``; a row with allowed positions but
    none above ``tau`` reveals its single most confident one (ties: leftmost)."""
    above = allowed & (confidence >= tau)
    neg = torch.tensor(float("-inf"), dtype=confidence.dtype, device=confidence.device)
    best = torch.where(allowed, confidence, neg).argmax(-1, keepdim=True)
    fallback = torch.zeros_like(allowed).scatter(-1, best, True) & allowed
    need = allowed.any(-1, keepdim=True) & ~above.any(-1, keepdim=True)
    return torch.where(need, fallback, above)


def fill_after_eos(canvas: torch.Tensor, gen_start: int, eos_id: int, mask_id: int, pad_id: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Fill the masked positions after a row's first decoded EOS with ``pad_id`` (default: EOS itself).

    A decoded token is fixed (masked diffusion never re-masks it), and a model trained with EOS
    padding puts only padding after an EOS, so those positions need no step; the positions before
    the EOS are decoded as usual. Returns the new canvas and the (B,) number of positions filled.
    """
    pad = eos_id if pad_id is None else pad_id
    gen = canvas[:, gen_start:]
    decoded = gen != mask_id
    eos_fixed = gen == eos_id
    first = torch.where(eos_fixed.any(-1), eos_fixed.long().argmax(-1), torch.full_like(eos_fixed[:, 0], gen.shape[1], dtype=torch.long))
    after = torch.arange(gen.shape[1], device=canvas.device).reshape(1, -1) > first.reshape(-1, 1)
    fill = after & ~decoded
    new_gen = torch.where(fill, torch.full_like(gen, pad), gen)
    return torch.cat([canvas[:, :gen_start], new_gen], 1), fill.sum(-1)


def guided_logits(logits: torch.Tensor, classifier_log_likelihood: torch.Tensor, gamma: float) -> torch.Tensor:
    """``log p(x0|xt) + gamma * log p(y|x0)`` renormalised over the vocabulary (float64 log-probs).

    ``classifier_log_likelihood`` (B, L, V) or (V,): ``log p(y | x0^i = v)`` for each candidate
    token (the factorised per-token form that makes discrete guidance one pass). gamma 0 returns
    the unguided log-probabilities.
    """
    logp = torch.log_softmax(logits.double(), -1)
    if gamma == 0:
        return logp
    return torch.log_softmax(logp + gamma * classifier_log_likelihood.to(logp), -1)
