"""BD3-LM sampling math : blocks left to right, each denoised by iterative unmasking.

A block of ``n`` positions starts all-mask (except positions already known, e.g. the tail of a prompt
that does not fill its block).  Over ``steps`` ancestral steps from ``t = 1`` to ``t = 0`` (linear
schedule), a masked position is unmasked between times ``t > s`` with probability
``(alpha(s) - alpha(t)) / (1 - alpha(t)) = (t - s) / t`` and then takes a token drawn from the
denoiser's distribution (the mask token excluded, SUBS).  Unmasked positions never change.  When a
step unmasks nothing, the denoiser's input is unchanged, so its logits are reused (no forward pass),
as in the paper's sampler.

``logits_fn(block)`` hides where the context comes from: a KV cache of the clean blocks before it
(the decoder) or a full recompute over ``[prefix, block]`` (the reference the tests compare with).
"""

from __future__ import annotations

from typing import Callable

import torch


def sample_categorical(logits: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Draw one token per position from softmax(logits) (..., V), by inverse CDF with the given generator."""
    probs = torch.softmax(logits.float(), dim=-1)
    cdf = probs.cumsum(-1)
    u = torch.rand(probs.shape[:-1] + (1,), generator=generator, device=probs.device) * cdf[..., -1:]
    return torch.searchsorted(cdf, u).squeeze(-1).clamp_max(probs.shape[-1] - 1)


def denoise_block(
    logits_fn: Callable[[torch.Tensor], torch.Tensor],
    block: torch.Tensor,
    *,
    mask_id: int,
    steps: int,
    generator: torch.Generator | None = None,
    process: Callable[[torch.Tensor], torch.Tensor] | None = None,
    greedy: bool = False,
    sample: Callable | None = None,
):
    """Iteratively unmask ``block`` (B, n) (mask_id where unknown). Returns (tokens (B, n), forward passes).

    ``sample(logits, generator)`` draws the candidate tokens (the decoder passes the head's sampler);
    each step draws the candidates first, then the reveal coins, so two callers with the same
    generator and the same logits make the same choices.
    """
    sample = sample or sample_categorical
    block = block.clone()
    logits = None
    forward_passes = 0
    for k in range(steps):
        masked = block == mask_id
        if not bool(masked.any()):
            break
        if logits is None:
            raw = logits_fn(block).float()
            raw[..., mask_id] = float("-inf")  # SUBS: never emit the mask
            logits = process(raw) if process is not None else raw
            forward_passes += 1
        t, s = 1.0 - k / steps, 1.0 - (k + 1) / steps
        candidate = logits.argmax(-1) if greedy else sample(logits, generator)
        reveal = torch.rand(block.shape, generator=generator, device=block.device) < (t - s) / t
        reveal &= masked
        block = torch.where(reveal, candidate, block)
        if bool(reveal.any()):
            logits = None  # the input changed: the next step needs a fresh forward pass
    return block, forward_passes
