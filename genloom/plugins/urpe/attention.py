"""The ``urpe_attention`` op: (softmax(Q K^T / sqrt(d) + B) * C) V with Toeplitz B and C.

Signature::

    urpe_attention(q, k, v, bias, gain, *, pattern=CAUSAL, q_pos=None, kv_pos=None, kv_valid=None)

``q``, ``k``, ``v`` are (B, H, L, Dh); ``bias`` and ``gain`` are (H, 2M + 1) tables indexed by the
relative distance ``q_pos - kv_pos`` clipped to [-M, M] (entry ``d + M``): ``bias`` is the RPE
added to the scores, ``gain`` the URPE matrix C multiplied into the probabilities after the
softmax (C_ij = gain[i - j]: a Toeplitz matrix). Masking follows the core attention op (the
pattern at the given positions, ``kv_valid``; a query with no allowed key gives zeros), through
``genloom.kernels.attention.masked_scores``.
"""

from __future__ import annotations

import torch

from genloom.core.pattern import CAUSAL, AttentionPattern


def relative_index(q_pos: torch.Tensor, kv_pos: torch.Tensor, max_distance: int) -> torch.Tensor:
    """(B, Lq, Lk) table index of the clipped relative distance ``q - kv`` (0 .. 2M)."""
    return (q_pos[:, :, None] - kv_pos[:, None, :]).clamp(-max_distance, max_distance) + max_distance


def toeplitz(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(H, 2M + 1) table read at (B, Lq, Lk) indices -> (B, H, Lq, Lk)."""
    return table[:, index].permute(1, 0, 2, 3)


class Reference:
    name = "reference"

    def supports(self, **_) -> str | None:
        return None

    def __call__(self, q, k, v, bias, gain, *, pattern: AttentionPattern = CAUSAL, q_pos=None, kv_pos=None, kv_valid=None):
        from genloom.kernels.attention import masked_scores

        B, Lq, Lk = q.shape[0], q.shape[2], k.shape[2]
        if kv_pos is None:
            kv_pos = torch.arange(Lk, device=q.device).expand(B, Lk)
        if q_pos is None:
            q_pos = torch.arange(Lk - Lq, Lk, device=q.device).expand(B, Lq)
        scores, mask, v = masked_scores(q, k, v, pattern=pattern, q_pos=q_pos, kv_pos=kv_pos, kv_valid=kv_valid)
        M = (bias.shape[1] - 1) // 2
        index = relative_index(q_pos, kv_pos, M)
        scores = scores + toeplitz(bias, index).to(scores.dtype)
        empty = ~mask.any(-1, keepdim=True)
        probs = torch.softmax(scores.masked_fill(empty, 0.0), dim=-1).masked_fill(empty, 0.0)
        probs = probs * toeplitz(gain, index).to(probs.dtype)  # URPE: C multiplies after the softmax
        return torch.matmul(probs, v).to(q.dtype)


def make_reference(config=None, ctx=None):
    return Reference()
