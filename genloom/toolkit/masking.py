"""Corruptions for masked-diffusion objectives that more than one technique uses.

:func:`complementary_masks` -- complementary masking (LaViDa, Fast-dLLM v2): from one draw of
masked positions, a second view masks exactly the other maskable positions. The two views'
mask sets are disjoint and together cover every maskable token, so every answer token is scored
exactly once per pair (no token of a short answer goes untrained in a step), and each view sees
as context exactly what the other view must predict.
"""

from __future__ import annotations

import torch


def complementary_masks(maskable: torch.Tensor, mask_prob: torch.Tensor | float, *, generator=None,
                        uniform: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Two boolean (B, L) masks: ``first`` masks each maskable position with probability
    ``mask_prob`` ((B,) or scalar), ``second = maskable & ~first``.

    Disjoint, and ``first | second == maskable``. ``uniform`` (B, L) gives the draw explicitly.
    """
    maskable = maskable.bool()
    prob = torch.as_tensor(mask_prob, dtype=torch.float64, device=maskable.device)
    if prob.dim() == 1:
        prob = prob.reshape(-1, 1)
    u = uniform if uniform is not None else torch.rand(maskable.shape, generator=generator, device=maskable.device, dtype=torch.float64)
    first = maskable & (u.to(torch.float64) < prob)
    second = maskable & ~first
    return first, second


def apply_mask(ids: torch.Tensor, masked: torch.Tensor, mask_id: int) -> torch.Tensor:
    """``ids`` with ``mask_id`` at the ``masked`` positions."""
    return torch.where(masked, torch.full_like(ids, mask_id), ids)


def complementary_views(ids: torch.Tensor, maskable: torch.Tensor, mask_prob, mask_id: int, *, generator=None):
    """The two complementary noisy copies stacked along the batch: (2B, L) ids and (2B, L) masks."""
    first, second = complementary_masks(maskable, mask_prob, generator=generator)
    masked = torch.cat([first, second], 0)
    return apply_mask(ids.repeat(2, 1), masked, mask_id), masked
