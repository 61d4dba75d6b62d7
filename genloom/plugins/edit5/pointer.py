"""The pointer network that orders the kept tokens (EdiT5's re-ordering step, after Felix).

Scores: every source position ``i`` and a learnt *start* query point at the source position that
follows them in the output, ``score(i -> j) = q_i . k_j / sqrt(d)`` with ``q = W_q h``, ``k = W_k h``
over the encoder states ``h`` (B, S, D); row 0 is the start, row ``1 + i`` is position ``i``.

Training (:func:`pointer_loss`): teacher forcing on the gold chain, start -> first kept token ->
... -> last kept token; each pointing row is a softmax over the *gold kept* positions except
itself, and its cross-entropy is averaged over the batch's pointing rows.

Decoding (:func:`greedy_order`): from the start, repeatedly follow the highest-scoring kept
position not visited yet, until every kept position is visited. The result is always a
permutation of the kept positions (each used exactly once, the chain cannot stop early or loop);
the choice is greedy rather than a global assignment (Hungarian/Sinkhorn), which may return
several cycles instead of one chain and would need repairing.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class PointerScores(nn.Module):
    """(B, S, D) encoder states -> (B, 1 + S, S) pointing scores (row 0: the start)."""

    def __init__(self, d_model: int, d_pointer: int, init_std: float = 0.02):
        super().__init__()
        self.query = nn.Linear(d_model, d_pointer)
        self.key = nn.Linear(d_model, d_pointer)
        self.start = nn.Parameter(torch.randn(d_pointer) * init_std)
        self.d_pointer = d_pointer

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        q = torch.cat([self.start.expand(h.shape[0], 1, -1), self.query(h)], 1)
        return q @ self.key(h).transpose(1, 2) / math.sqrt(self.d_pointer)


def pointer_loss(scores: torch.Tensor, keep: torch.Tensor, orders: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Summed cross-entropy of the gold successors, the number of pointing rows, and how many of
    them the argmax gets right. ``scores`` (B, 1 + S, S); ``keep`` (B, S) gold tags; ``orders`` the
    gold kept positions in output order per row."""
    B, _, S = scores.shape
    rows, cols, batch = [], [], []
    for b, order in enumerate(orders):
        chain = [-1] + list(order)
        for a, c in zip(chain[:-1], chain[1:]):
            batch.append(b)
            rows.append(a + 1)
            cols.append(c)
    if not rows:
        zero = scores.sum() * 0.0
        return zero, torch.tensor(0.0), torch.tensor(0.0)
    b_idx = torch.tensor(batch, device=scores.device)
    r_idx = torch.tensor(rows, device=scores.device)
    picked = scores[b_idx, r_idx]  # (N, S)
    allowed = keep[b_idx].bool().clone()
    self_pos = r_idx - 1
    has_self = self_pos >= 0
    allowed[has_self.nonzero().flatten(), self_pos[has_self]] = False
    logits = picked.float().masked_fill(~allowed, float("-inf"))
    target = torch.tensor(cols, device=scores.device)
    nll = nn.functional.cross_entropy(logits, target, reduction="sum")
    correct = (logits.argmax(-1) == target).sum().float()
    return nll, torch.tensor(float(len(rows))), correct.detach()


def greedy_order(scores: torch.Tensor, keep) -> list[int]:
    """The kept positions in output order: from the start row, follow the best unvisited kept
    position. ``scores`` (1 + S, S) of one sequence; ``keep`` S flags. Always a permutation of the
    kept positions."""
    kept = [p for p, k in enumerate(keep) if bool(k)]
    left = set(kept)
    order: list[int] = []
    row = 0
    scores = scores.float().cpu()
    while left:
        cand = sorted(left)
        best = cand[int(scores[row, cand].argmax())]
        order.append(best)
        left.remove(best)
        row = best + 1
    return order
